#!/usr/bin/env bash
# The Python client (deploy/clients/python) against a live local 4-validator chain: the worked
# examples of docs/ledger.md, keys, submit and refusals, GET /v1/events with filters and
# Last-Event-ID, a meter reading, block and certificate verification with tampered blocks
# refused, account proofs verified and their tampered copies refused step by step. Uses Debian's /usr/bin/python3 (python3-ecdsa, python3-cryptography), not whatever
# python3 is first on PATH.
set -euo pipefail
B=${BUILD:-build}
PY=/usr/bin/python3
export PYTHONDONTWRITEBYTECODE=1
command -v curl >/dev/null && command -v jq >/dev/null || { echo "t_pyclient: FAIL: curl or jq missing (make deps installs it)"; exit 1; }
$PY -c 'import ecdsa, cryptography' 2>/dev/null || { echo "t_pyclient: FAIL: python3-ecdsa or python3-cryptography missing (make deps)"; exit 1; }
. "$(dirname "$0")/lib_chain.sh"
chain_start
nodes=$(for i in 0 1 2 3; do printf 'http://%s,' "$(http $i)"; done)
cd deploy/clients/python
out=$(TEM_NODES="$nodes" TEM_KEYS="$dir" timeout 180 $PY -m unittest -v test_tem_client 2>&1) || { echo "$out"; fail "python client tests"; }
echo "$out" | grep -E ' \.\.\. ' | sed 's/^/  /'
grep -q "skipped" <<<"$(echo "$out" | tail -1)" && fail "live tests skipped"
n=$(echo "$out" | grep -c ' \.\.\. ok$')
[ "$n" -ge 15 ] || fail "only $n python tests passed"
echo "ok - python client: $n tests against a 4-validator chain [${SECONDS}s]"
