# Shared by the bench scripts: create a vault and act as one operator who
# holds every role and grants on everything (benchmarks measure the data
# path, not separation of duties). Needs $custos and CUSTOS_VAULT set.
bench_vault() {
  export CUSTOS_USER=admin CUSTOS_CREDENTIAL="bench-admin-not-secret"
  "$custos" init --kdf-memory-mib 8 --kdf-iterations 1 >/dev/null
  # One operator, no second principal to approve: dual control off.
  "$custos" config set dual-control none >/dev/null
  CUSTOS_NEW_CREDENTIAL="bench-operator-not-secret" "$custos" user add bench \
    --role security-admin --role key-custodian --role storage-admin --role app --role auditor >/dev/null
  "$custos" user grant bench --data '**' >/dev/null
  "$custos" user grant bench --key '**' >/dev/null
  export CUSTOS_USER=bench CUSTOS_CREDENTIAL="bench-operator-not-secret"
}
