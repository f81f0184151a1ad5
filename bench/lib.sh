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
