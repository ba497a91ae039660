#!/usr/bin/env bash
# A whole consortium, each role on its own host, with the commands of docs/.
#
# Run as root on one Linux machine (it creates network namespaces):
#     sudo examples/consortium/run.sh [--backend mpc|enclave] [--work DIR] [--queries N] [--kill-party R]
#                                     [--kill-enclave]
# Nine "hosts", each a network namespace with its own address on one bridge:
# the operator (coordinator, MPC party 0, a web server for its published log),
# parties 1-3, the TTP dealer, three sources and an auditor. Every role makes its
# own keys on its host and publishes only the public half; the operator assembles
# the policy and the roster from them; everyone checks the policy's digest; the
# parties and the dealer run `party serve` / `dealer serve`, the operator
# `coordinator run` on a queries file (the first 50 labelled: calibration), the
# sources `source watch` on real vote files (scikit-learn's digits, one model per
# slice: make_votes.py); the auditor audits the log over HTTP and each source
# verifies its own history. With --kill-party R, party R's host is killed mid-run
# and started again on its state; the run goes on.
# With --backend enclave (enclave.sh): six hosts (operator, enclave, three sources,
# auditor); the enclave runs `enclave serve --provider sim` (SIMULATED attestation:
# not a TEE), the sources verify its attestation before sending, and the auditor
# trusts the simulated root by name with the policy's PCR0. With --kill-enclave, the
# enclave application is killed mid-run; `enclave serve` starts it again on its ledger.
# Exits 0 only if the audit and every source's verification are clean; removes
# its namespaces on exit.
set -euo pipefail

BACKEND=mpc
WORK=
QUERIES=200
KILL=
KILL_ENCLAVE=
while [ $# -gt 0 ]; do
    case $1 in
        --backend) BACKEND=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --queries) QUERIES=$2; shift 2 ;;
        --kill-party) KILL=$2; shift 2 ;;
        --kill-enclave) KILL_ENCLAVE=1; shift ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case $BACKEND in
    mpc|enclave) ;;
    *) echo "run.sh: --backend must be mpc or enclave, got $BACKEND" >&2; exit 2 ;;
esac
if [ "$BACKEND" = enclave ] && [ -n "$KILL" ]; then
    echo "run.sh: --kill-party is for --backend mpc (the enclave backend has no parties)" >&2
    exit 2
fi
if [ "$BACKEND" = mpc ] && [ -n "$KILL_ENCLAVE" ]; then
    echo "run.sh: --kill-enclave is for --backend enclave" >&2
    exit 2
fi
if [ "$(id -u)" != 0 ]; then
    echo "run.sh: needs root (it creates network namespaces)" >&2
    exit 2
fi
DVSECURE=${DVSECURE:-dvsecure}
PYTHON=${PYTHON:-$(dirname "$(command -v "$DVSECURE")")/python}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-$(mktemp -d -t dvsecure-consortium.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
TAG=dvc$(( $$ % 100000 ))
NET=10.79.$(( $$ % 250 ))
if [ "$BACKEND" = enclave ]; then
    HOSTS=(operator enclave hospital-a hospital-b clinic-c auditor)
else
    HOSTS=(operator party-1 party-2 party-3 dealer hospital-a hospital-b clinic-c auditor)
fi
SOURCES=(hospital-a hospital-b clinic-c)
declare -A ADDR
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for h in hub "${HOSTS[@]}"; do ip netns del "$TAG-$h" 2>/dev/null || true; done
}
trap cleanup EXIT

in_host() { local h=$1; shift; ip netns exec "$TAG-$h" "$@"; }
# A long-running role in its own process group (so it can be stopped, or killed, whole);
# its pid (the group's) in LAST. Output to OUT, logs (JSON lines) to ERR.
start() {
    local h=$1 out=$2 err=$3; shift 3
    setsid ip netns exec "$TAG-$h" "$@" > "$out" 2> "$err" &
    LAST=$!
    PIDS+=("$LAST")
}
say() { echo "== $*"; }

# One namespace per host, each joined to a bridge in the hub namespace.
ip netns add "$TAG-hub"
ip -n "$TAG-hub" link add br0 type bridge
ip -n "$TAG-hub" link set br0 up
for i in "${!HOSTS[@]}"; do
    h=${HOSTS[$i]}; k=$((i + 1))
    ADDR[$h]=$NET.$k
    ip netns add "$TAG-$h"
    ip link add "vc$k$TAG" netns "$TAG-hub" type veth peer name eth0 netns "$TAG-$h"
    ip -n "$TAG-hub" link set "vc$k$TAG" master br0 up
    ip -n "$TAG-$h" addr add "$NET.$k/24" dev eth0
    ip -n "$TAG-$h" link set eth0 up
    ip -n "$TAG-$h" link set lo up
done
say "${#HOSTS[@]} hosts on $NET.0/24 (namespaces $TAG-*): ${HOSTS[*]}"
if [ "$BACKEND" = enclave ]; then
    # The enclave walk-through: the same namespaces and helpers, its own steps.
    . "$HERE/enclave.sh"
    exit 0       # enclave.sh fails the script (set -e) unless its audit and verifications are clean
fi

# 1. Every role makes its own keys on its own host (private halves never leave it).
in_host operator "$DVSECURE" keys new --role operator --id operator --out "$WORK/operator/state" > /dev/null
in_host operator "$DVSECURE" keys new --role party --id party-0 --rank 0 \
    --out "$WORK/operator/state/parties/party-0" > /dev/null
for r in 1 2 3; do
    in_host "party-$r" "$DVSECURE" keys new --role party --id "party-$r" --rank "$r" \
        --out "$WORK/party-$r/state" > /dev/null
done
in_host dealer "$DVSECURE" keys new --role dealer --id dealer --out "$WORK/dealer/state" > /dev/null
for s in "${SOURCES[@]}"; do
    in_host "$s" "$DVSECURE" keys new --role source --id "$s" --out "$WORK/$s/state" > /dev/null
done
say "keys made on each host; public files published"

# 2. The operator assembles the policy from the published public files: three
# slice-unit sources (8 slices, one model each), Confident-GNMax, budgets at the
# slice level; then the roster (where each member listens, and its link key).
P=$WORK/operator/consortium.toml
"$DVSECURE" consortium init --name digits-walkthrough --operator-key "$WORK/operator/state/operator.pub.json" \
    --sigma1 1.0 --threshold 1.0 --sigma2 1.0 --out "$P" > /dev/null
for s in "${SOURCES[@]}"; do
    "$DVSECURE" consortium add-source --policy "$P" --id "$s" --band 0.5..1.0 --budget rho=5 --slices 8 \
        --key "$WORK/$s/state/source.pub.json" > /dev/null
done
"$DVSECURE" consortium add-party --policy "$P" --rank 0 --key "$WORK/operator/state/parties/party-0/party-0.pub.json" \
    > /dev/null
for r in 1 2 3; do
    "$DVSECURE" consortium add-party --policy "$P" --rank "$r" --key "$WORK/party-$r/state/party-$r.pub.json" > /dev/null
done
"$DVSECURE" consortium add-party --policy "$P" --dealer --key "$WORK/dealer/state/dealer.pub.json" > /dev/null
PRINCIPALS=$WORK/operator/consortium.principals.json
DIGEST=$("$DVSECURE" consortium digest "$P" --json | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["digest"])')
key() { "$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"])' "$1"; }
cat > "$WORK/operator/roster.json" <<EOF
{"parties": [{"address": "${ADDR[operator]}:7100", "key": "$(key "$WORK/operator/state/parties/party-0/party-0.pub.json")"},
             {"address": "${ADDR[party-1]}:7100", "key": "$(key "$WORK/party-1/state/party-1.pub.json")"},
             {"address": "${ADDR[party-2]}:7100", "key": "$(key "$WORK/party-2/state/party-2.pub.json")"},
             {"address": "${ADDR[party-3]}:7100", "key": "$(key "$WORK/party-3/state/party-3.pub.json")"}],
 "dealer": {"address": "${ADDR[dealer]}:7100", "key": "$(key "$WORK/dealer/state/dealer.pub.json")"}}
EOF
ROSTER=$WORK/operator/roster.json
say "policy $DIGEST"
# Everyone checks the digest they agree to before they run anything.
for h in "${HOSTS[@]}"; do in_host "$h" "$DVSECURE" consortium digest "$P" --expect "$DIGEST" > /dev/null; done
say "every host agreed to digest ${DIGEST:0:16}..."

# 3. Real vote files, one per source; the operator's queries (the first 50 labelled).
"$PYTHON" "$HERE/make_votes.py" "$WORK" "$QUERIES" 50

# 4. Each role's config.
for r in 1 2 3; do
    cat > "$WORK/party-$r/party.toml" <<EOF
rank = $r
roster = "$ROSTER"
state = "state"
policy = "$P"
expect_digest = "$DIGEST"
principals = "$PRINCIPALS"
listen = "${ADDR[party-$r]}:7200"
restart_delay = 1.0
EOF
done
cat > "$WORK/dealer/dealer.toml" <<EOF
roster = "$ROSTER"
state = "state"
EOF
cat > "$WORK/operator/coordinator.toml" <<EOF
policy = "$P"
expect_digest = "$DIGEST"
roster = "$ROSTER"
principals = "$PRINCIPALS"
state = "state"
out = "published"
results = "results.jsonl"
listen = "${ADDR[operator]}:7200"
batch = 50
deadline = 60
EOF
# Each party publishes its signed endpoint.json; here the hosts share a file system,
# so the sources read them where the parties write them (a URL works the same way).
ENDPOINTS="\"$WORK/operator/state/parties/party-0/endpoint.json\""
for r in 1 2 3; do ENDPOINTS="$ENDPOINTS, \"$WORK/party-$r/state/endpoint.json\""; done
for s in "${SOURCES[@]}"; do
    cat > "$WORK/$s/source.toml" <<EOF
id = "$s"
key = "state"
policy = "$P"
expect_digest = "$DIGEST"
parties = [$ENDPOINTS]
coordinator = "http://${ADDR[operator]}:8080/"
state = "state"
poll = 1.0
EOF
done

# 5. The services, each on its host.
mkdir -p "$WORK/operator/published"
start operator /dev/null "$WORK/operator/web.log" "$PYTHON" -m http.server --bind "${ADDR[operator]}" 8080 \
    --directory "$WORK/operator/published"
start dealer "$WORK/dealer/serve.out" "$WORK/dealer/serve.log" "$DVSECURE" dealer serve --config "$WORK/dealer/dealer.toml"
declare -A PARTY
for r in 1 2 3; do
    start "party-$r" "$WORK/party-$r/serve.out" "$WORK/party-$r/serve.log" \
        "$DVSECURE" party serve --config "$WORK/party-$r/party.toml"
    PARTY[$r]=$LAST
done
start operator "$WORK/operator/summary.json" "$WORK/operator/coordinator.log" "$DVSECURE" coordinator run \
    --config "$WORK/operator/coordinator.toml" --queries "$WORK/operator/queries.jsonl" --json
COORD=$LAST
# The sources start once every party has published its endpoint (it does when it listens).
for f in "$WORK/operator/state/parties/party-0/endpoint.json" "$WORK"/party-{1,2,3}/state/endpoint.json; do
    for _ in $(seq 600); do [ -s "$f" ] && break; sleep 0.5; done
    [ -s "$f" ] || { echo "run.sh: no $f after 300 s" >&2; tail -5 "$WORK"/party-*/serve.log >&2; exit 1; }
done
for s in "${SOURCES[@]}"; do
    start "$s" "$WORK/$s/watch.out" "$WORK/$s/watch.log" "$DVSECURE" source watch --config "$WORK/$s/source.toml" \
        --votes "$WORK/$s/votes.jsonl"
done
say "services started: dealer, parties 1-3, coordinator with party 0, 3 sources watching"

if [ -n "$KILL" ]; then
    # Wait for the first released batch, then take party KILL's host down hard and bring it back.
    for _ in $(seq 600); do
        n=$(grep -c '"released"' "$WORK/operator/results.jsonl" 2>/dev/null || true)
        [ "${n:-0}" -ge 50 ] && break
        kill -0 "$COORD" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL -- "-${PARTY[$KILL]}"
    say "killed party $KILL's host (after ${n:-0} released); starting it again on its state"
    sleep 2
    start "party-$KILL" "$WORK/party-$KILL/serve-restarted.out" "$WORK/party-$KILL/serve-restarted.log" \
        "$DVSECURE" party serve --config "$WORK/party-$KILL/party.toml"
    PARTY[$KILL]=$LAST
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

# 6. The auditor, on its own host, fetches the log over HTTP and audits it against the policy.
mkdir -p "$WORK/auditor"
say "auditor: dvsecure audit http://${ADDR[operator]}:8080/ --policy consortium.toml"
set +e
in_host auditor "$DVSECURE" audit "http://${ADDR[operator]}:8080/" --policy "$P" | tee "$WORK/auditor/audit.txt"
AUDIT=${PIPESTATUS[0]}
# 7. Each source verifies its own history: its commitments, its spends, its witness.
VERIFY=0
for s in "${SOURCES[@]}"; do
    in_host "$s" "$DVSECURE" source verify --config "$WORK/$s/source.toml" > "$WORK/$s/verify.txt" 2>&1
    code=$?
    say "$s: source verify exit $code ($(tail -1 "$WORK/$s/verify.txt"))"
    [ $code = 0 ] || VERIFY=1
done
set -e
echo "work directory: $WORK"
[ "$AUDIT" = 0 ] && [ "$VERIFY" = 0 ]
