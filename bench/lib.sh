# Shared by the bench scripts: create a vault and act as one operator who
# holds every role and grants on everything (benchmarks measure the data
# path, not separation of duties). Needs $custos and CUSTOS_VAULT set.
# Extra arguments go to `custos init` (`--repository URL`).
bench_vault() {
  export CUSTOS_USER=admin CUSTOS_CREDENTIAL="bench-admin-not-secret"
  "$custos" init --kdf-memory-mib 19 --kdf-iterations 2 "$@" >/dev/null
  # One operator, no second principal to approve: dual control off.
  "$custos" config set dual-control none >/dev/null
  # A script token, as a cron job would use (README: "for scripts"); a
  # passphrase would add an Argon2id check (~20 ms) to every timed command.
  local token
  token=$("$custos" user add bench --token --json \
    --role security-admin --role key-custodian --role storage-admin --role app --role auditor |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
  "$custos" user grant bench --data '**' >/dev/null
  "$custos" user grant bench --key '**' >/dev/null
  export CUSTOS_USER=bench CUSTOS_CREDENTIAL="$token"
}

# replace_section NAME TITLE FILE: put FILE's text between the markers
# <!-- NAME:begin --> and <!-- NAME:end --> of docs/PERFORMANCE.md (adding
# a section titled TITLE at the end the first time).
replace_section() {
  python3 - "$(dirname "${BASH_SOURCE[0]}")/../docs/PERFORMANCE.md" "$1" "$2" "$3" <<'PY'
import re, sys
doc, name, title, sec = sys.argv[1], sys.argv[2], sys.argv[3], open(sys.argv[4]).read().strip()
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
text = open(doc).read()
if begin not in text:
    text += f"\n## {title}\n\n{begin}\n{end}\n"
open(doc, "w").write(re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda m: sec, text, flags=re.S))
PY
}

# bench_tls DIR: a CA (DIR/ca.pem) and a certificate for localhost and
# 127.0.0.1 signed by it (DIR/server.pem, DIR/server.key), for servers over
# loopback TLS.
bench_tls() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
    -keyout "$1/ca.key" -out "$1/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$1/server.key" -out "$1/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$1/san.ext"
  openssl x509 -req -in "$1/server.csr" -CA "$1/ca.pem" -CAkey "$1/ca.key" -CAcreateserial -days 2 \
    -extfile "$1/san.ext" -out "$1/server.pem" 2>/dev/null
}

# make_small_tree DIR N: N files of 1-64 KiB in directories of 100, half
# random bytes and half compressible text; the same files for the same N.
make_small_tree() {
  python3 - "$1" "$2" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(2026)
line = b"2026-12-03T10:00:00Z host-17 service=billing level=info request handled in 12 ms\n"
for i in range(n):
    d = os.path.join(root, f"d{i // 100:04}")
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    size = rng.randint(1024, 65536)
    with open(os.path.join(d, f"f{i:06}.dat"), "wb") as f:
        if i % 2 == 0:
            f.write(rng.randbytes(size))
        else:
            f.write((line * (size // len(line) + 1))[:size])
PY
}

# custos_binary: set $custos to $CUSTOS_BIN when given (another build,
# measured on the same machine the same day), else to this checkout's
# release build, built first. Run from the checkout's root.
custos_binary() {
  if [ -n "${CUSTOS_BIN:-}" ]; then
    custos=$CUSTOS_BIN
  else
    cargo build --release --locked -p custos-cli
    custos="$(pwd)/target/release/custos"
  fi
}

# timed CMD...: its wall time in seconds (output discarded, errors kept in
# $work/step.err); a command that fails ends the run, naming it.
timed() {
  local t0 t1
  t0=$(date +%s.%N)
  "$@" > /dev/null 2> "$work/step.err" || { echo "failed: $*: $(tail -3 "$work/step.err")" >&2; return 1; }
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

# make_big_tree DIR: compare.sh's data, about 2 GiB in 200 files of 1 MiB
# to ~19 MiB in ten directories; even files random, odd files one text
# line repeated.
make_big_tree() {
  python3 - "$1" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(2026)
line = b"employee_id,name,department,salary,notes about this row that compress well\n"
for i in range(200):
    size = (1 + (i * 37) % 19) << 20
    d = os.path.join(root, f"dir{i % 10}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"file{i:03}.dat"), "wb") as f:
        if i % 2 == 0:
            f.write(os.urandom(size))
        else:
            f.write((line * (size // len(line) + 1))[:size])
PY
}
