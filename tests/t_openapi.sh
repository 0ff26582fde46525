#!/usr/bin/env bash
# docs/openapi.yaml against a live 4-validator chain: tests/openapi_check.py exercises every
# route (answers and refusals, the event stream, the per-address subscriber limit) and
# validates each response with python3-jsonschema (Draft 2020-12); a status or body the
# contract does not allow, or a route never exercised, fails the test.
set -euo pipefail
B=${BUILD:-build}
PY=/usr/bin/python3
export PYTHONDONTWRITEBYTECODE=1
command -v curl >/dev/null && command -v jq >/dev/null || { echo "t_openapi: FAIL: curl or jq missing (make deps installs it)"; exit 1; }
$PY -c 'import jsonschema, yaml, ecdsa' 2>/dev/null || { echo "t_openapi: FAIL: python3-jsonschema, python3-yaml or python3-ecdsa missing (make deps)"; exit 1; }
. "$(dirname "$0")/lib_chain.sh"
chain_start
timeout 180 $PY tests/openapi_check.py docs/openapi.yaml "http://$(http 0)" "$dir" "http://$(http 1)" || fail "responses do not match docs/openapi.yaml"
