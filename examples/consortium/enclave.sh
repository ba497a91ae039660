# The enclave walk-through's steps, sourced by run.sh --backend enclave once the
# hosts exist (its helpers: in_host, start, say; its variables: WORK, ADDR, SOURCES,
# DVSECURE, PYTHON, HERE, QUERIES). Not meant to run on its own.
#
# Six hosts: the operator (coordinator and a web server for its published
# directory), the enclave (`enclave serve --provider sim`: a SIMULATED attestation,
# not a TEE), three sources and an auditor. The policy pins the enclave's PCR0; the
# principals file names the sources' keys and the coordinator's. Every client
# verifies the enclave's attestation before trusting it: the coordinator before
# opening a query, each source before each round's first vote; the auditor audits
# the published log with the simulated root trusted by name and the PCR0.

# 1. Keys, each on its own host.
in_host operator "$DVSECURE" keys new --role operator --id operator --out "$WORK/operator/state" > /dev/null
for s in "${SOURCES[@]}"; do
    in_host "$s" "$DVSECURE" keys new --role source --id "$s" --out "$WORK/$s/state" > /dev/null
done
say "keys made on each host; public files published"

# 2. The enclave's measurement (here: the simulated enclave built from this checkout;
# on Nitro, the PCR0 of the image everyone reviewed), pinned in the policy; the
# sources' keys and the coordinator's in the principals file the enclave attests.
PCR0=$(in_host enclave "$DVSECURE" enclave measurement)
P=$WORK/operator/consortium.toml
"$DVSECURE" consortium init --name digits-enclave --enclave-pcr0 "$PCR0" \
    --sigma1 1.0 --threshold 1.0 --sigma2 1.0 --out "$P" > /dev/null
for s in "${SOURCES[@]}"; do
    "$DVSECURE" consortium add-source --policy "$P" --id "$s" --band 0.5..1.0 --budget rho=5 --slices 8 \
        --key "$WORK/$s/state/source.pub.json" > /dev/null
done
PRINCIPALS=$WORK/operator/consortium.principals.json
"$DVSECURE" enclave add-coordinator --principals "$PRINCIPALS" --key "$WORK/operator/state/operator.pub.json" \
    --name operator > /dev/null
DIGEST=$("$DVSECURE" consortium digest "$P" --json | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["digest"])')
say "policy $DIGEST, enclave PCR0 ${PCR0:0:16}..."
for h in "${HOSTS[@]}"; do in_host "$h" "$DVSECURE" consortium digest "$P" --expect "$DIGEST" > /dev/null; done
say "every host agreed to digest ${DIGEST:0:16}..."

# 3. Real vote files and the operator's queries (the first 50 labelled).
"$PYTHON" "$HERE/make_votes.py" "$WORK" "$QUERIES" 50

# 4. Configs. The sources fetch the enclave's TLS certificate from the operator's
# published directory: untrusted, it is accepted only because the attestation binds it.
EADDR=${ADDR[enclave]}:7300
SIMROOT=$WORK/enclave/sim-ca/root.pem
mkdir -p "$WORK/enclave"
cat > "$WORK/enclave/enclave.toml" <<EOF
policy = "$P"
expect_digest = "$DIGEST"
principals = "$PRINCIPALS"
state = "state"
out = "log"
listen = "$EADDR"
provider = "sim"
sim_ca = "sim-ca"
EOF
cat > "$WORK/operator/coordinator.toml" <<EOF
policy = "$P"
expect_digest = "$DIGEST"
principals = "$PRINCIPALS"
key = "state"
name = "operator"
enclave = "$EADDR"
enclave_tls = "$WORK/enclave/state/tls/server.pem"
trust_sim_root = "$SIMROOT"
state = "state"
out = "published"
results = "results.jsonl"
batch = 50
deadline = 15
EOF
for s in "${SOURCES[@]}"; do
    cat > "$WORK/$s/source.toml" <<EOF
id = "$s"
key = "state"
policy = "$P"
expect_digest = "$DIGEST"
enclave = "$EADDR"
principals = "$PRINCIPALS"
trust_sim_root = "$SIMROOT"
coordinator = "http://${ADDR[operator]}:8080/"
state = "state"
poll = 1.0
EOF
done

# 5. The services, each on its host.
mkdir -p "$WORK/operator/published"
start operator /dev/null "$WORK/operator/web.log" "$PYTHON" -m http.server --bind "${ADDR[operator]}" 8080 \
    --directory "$WORK/operator/published"
start enclave "$WORK/enclave/serve.out" "$WORK/enclave/serve.log" "$DVSECURE" enclave serve \
    --config "$WORK/enclave/enclave.toml" --provider sim
for _ in $(seq 600); do [ -s "$WORK/enclave/state/ready.json" ] && break; sleep 0.5; done
[ -s "$WORK/enclave/state/ready.json" ] || { echo "run.sh: the enclave did not start" >&2
    tail -20 "$WORK/enclave/serve.log" >&2; exit 1; }
say "enclave serving at $EADDR (SIMULATED attestation: its root is trusted by name)"
start operator "$WORK/operator/summary.json" "$WORK/operator/coordinator.log" "$DVSECURE" coordinator run \
    --backend enclave --config "$WORK/operator/coordinator.toml" --queries "$WORK/operator/queries.jsonl" --json
COORD=$LAST
for s in "${SOURCES[@]}"; do
    start "$s" "$WORK/$s/watch.out" "$WORK/$s/watch.log" "$DVSECURE" source watch --config "$WORK/$s/source.toml" \
        --votes "$WORK/$s/votes.jsonl"
done
say "services started: enclave, coordinator, 3 sources watching"

if [ -n "$KILL_ENCLAVE" ]; then
    # After the first released round, kill the enclave application hard (not its
    # supervisor): `enclave serve` starts it again on its ledger with a new instance key;
    # the coordinator verifies the new instance and re-opens the lost round.
    for _ in $(seq 600); do
        n=$(grep -c '"released"' "$WORK/operator/results.jsonl" 2>/dev/null || true)
        [ "${n:-0}" -ge 50 ] && break
        kill -0 "$COORD" 2>/dev/null || break
        sleep 0.5
    done
    sleep 2
    APP=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$WORK/enclave/state/ready.json")
    kill -KILL "$APP"
    say "killed the enclave application (pid $APP, after ${n:-0} released); enclave serve starts it again"
fi

set +e
wait "$COORD"
CODE=$?
set -e
"$PYTHON" -c '
import json, sys
s = json.load(open(sys.argv[1]))
print("== coordinator: released %(released)d (answered %(answered)d), failed %(failed)d, calibrated %(calibrated)s" % s)
' "$WORK/operator/summary.json" || {
    echo "run.sh: the coordinator did not finish (exit $CODE):" >&2; tail -20 "$WORK/operator/coordinator.log" >&2; exit 1; }

# 6. The auditor fetches the log over HTTP and audits it: the policy, every signer's
# attestation (the PCR0, the principals, the simulated root trusted by name).
mkdir -p "$WORK/auditor"
say "auditor: dvsecure audit http://${ADDR[operator]}:8080/ --policy consortium.toml --enclave-pcr0 PCR0 --trust-sim-root root.pem --enclave-principals consortium.principals.json"
set +e
in_host auditor "$DVSECURE" audit "http://${ADDR[operator]}:8080/" --policy "$P" --enclave-pcr0 "$PCR0" \
    --trust-sim-root "$SIMROOT" --enclave-principals "$PRINCIPALS" | tee "$WORK/auditor/audit.txt"
AUDIT=${PIPESTATUS[0]}
# 7. Each source verifies its own history.
VERIFY=0
for s in "${SOURCES[@]}"; do
    in_host "$s" "$DVSECURE" source verify --config "$WORK/$s/source.toml" > "$WORK/$s/verify.txt" 2>&1
    code=$?
    say "$s: source verify exit $code ($(tail -1 "$WORK/$s/verify.txt"))"
    [ $code = 0 ] || VERIFY=1
done
set -e
echo "work directory: $WORK"
[ "$AUDIT" = 0 ] && [ "$VERIFY" = 0 ] || exit 1
