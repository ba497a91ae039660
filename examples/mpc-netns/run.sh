#!/usr/bin/env bash
# The MPC demo with every computing party and the dealer on its own host.
#
# Run as root on one Linux machine (it creates network namespaces):
#     sudo examples/mpc-netns/run.sh [WORKDIR] [QUERIES]
# Four "hosts", each a network namespace with its own address on one bridge:
# the coordinator with party 0 (10.78.X.1), party 1, party 2 and the TTP dealer.
# Each member makes its key on its host, the operator writes the roster and the
# policy naming those keys, parties 1, 2 and the dealer start `dvsecure party`,
# the coordinator runs `dvsecure demo --roster`, and the auditor checks the
# published log. Exits 0 only if the audit is clean; removes its namespaces on exit.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "run.sh: needs root (it creates network namespaces)" >&2
    exit 2
fi
DVSECURE=${DVSECURE:-dvsecure}
PYTHON=${PYTHON:-$(dirname "$(command -v "$DVSECURE")")/python}
WORK=${1:-$(mktemp -d -t dvsecure-netns.XXXXXX)}
QUERIES=${2:-60}
TAG=dvsn$(( $$ % 100000 ))
NET=10.78.$(( $$ % 250 ))
HOSTS=(coord p1 p2 dealer)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for h in hub "${HOSTS[@]}"; do ip netns del "$TAG-$h" 2>/dev/null || true; done
}
trap cleanup EXIT

in_host() { local h=$1; shift; ip netns exec "$TAG-$h" "$@"; }

# One namespace per host, each joined to a bridge in the hub namespace.
ip netns add "$TAG-hub"
ip -n "$TAG-hub" link add br0 type bridge
ip -n "$TAG-hub" link set br0 up
for i in "${!HOSTS[@]}"; do
    h=${HOSTS[$i]}; k=$((i + 1))
    ip netns add "$TAG-$h"
    ip link add "vh$k" netns "$TAG-hub" type veth peer name eth0 netns "$TAG-$h"
    ip -n "$TAG-hub" link set "vh$k" master br0 up
    ip -n "$TAG-$h" addr add "$NET.$k/24" dev eth0
    ip -n "$TAG-$h" link set eth0 up
    ip -n "$TAG-$h" link set lo up
done

# Each member makes its own key on its host and publishes only the public half.
mkdir -p "$WORK"
key() { "$DVSECURE" party --show-key "$@" | "$PYTHON" -c 'import json,sys; d=json.load(sys.stdin); print(d.get("cosign_key") or d["key"])'; }
K0=$(key --rank 0 --state "$WORK/coord/state/parties/party-0")
K1=$(key --rank 1 --state "$WORK/p1")
K2=$(key --rank 2 --state "$WORK/p2")
KD=$(key --dealer --state "$WORK/dealer")
cat > "$WORK/roster.json" <<EOF
{"parties": [{"address": "$NET.1:7100", "key": "$K0"},
             {"address": "$NET.2:7100", "key": "$K1"},
             {"address": "$NET.3:7100", "key": "$K2"}],
 "dealer": {"address": "$NET.4:7100", "key": "$KD"}}
EOF

# The operator writes the policy everyone agrees to: the demo consortium, signed
# by the operator's key and the three parties', with the dealer's key pinned.
"$PYTHON" - "$WORK" "$K0" "$K1" "$K2" "$KD" <<'EOF'
import sys
from pathlib import Path
from dvsecure.demo.consortium import default_policy
from dvsecure.log.signers import public_key_b64
from dvsecure.log.writer import operator_signer
from dvsecure.policy import SignerPolicy
work, parties, dealer = Path(sys.argv[1]), tuple(sys.argv[2:5]), sys.argv[5]
policy = default_policy(5)
operator = operator_signer(work / "coord" / "state", policy)
policy = policy.with_signers(SignerPolicy(operator=public_key_b64(operator.verifier_key_string),
                                          parties=parties, dealer=dealer))
(work / "policy.toml").write_text(policy.to_toml())
print(f"policy {policy.digest()[:16]}... names 3 parties and the dealer")
EOF

for r in 1 2; do
    in_host "p$r" "$DVSECURE" party --rank "$r" --roster "$WORK/roster.json" --state "$WORK/p$r" \
        --policy "$WORK/policy.toml" > "$WORK/p$r.log" 2>&1 &
    PIDS+=($!)
done
in_host dealer "$DVSECURE" party --dealer --roster "$WORK/roster.json" --state "$WORK/dealer" \
    > "$WORK/dealer.log" 2>&1 &
PIDS+=($!)

in_host coord "$DVSECURE" demo --roster "$WORK/roster.json" --policy "$WORK/policy.toml" \
    --state "$WORK/coord/state" --out "$WORK/published" --queries "$QUERIES"
for pid in "${PIDS[@]}"; do wait "$pid"; done      # the demo's stop reaches every party and the dealer
PIDS=()

"$DVSECURE" audit "$WORK/published"
