#!/usr/bin/env bash
# Account proofs end to end on a live 4-validator chain: GET /v1/accounts/{key}/proof answers,
# `temctl account KEY --prove` verifies a proof fetched from a node and the same proof offline
# (--proof, after --save), refuses each tampered copy of tests/tools/proof_tamper.py with exit 1
# naming the step that caught it (certificate, header, root, path, record), refuses a genuine
# proof of another account and a genesis of another chain, verifies an exclusion proof of an
# unknown key, the route's refusals (bad key, old height) are the documented ones, and on a
# stalled chain waiting proofs are bounded per address and time out.
set -euo pipefail
B=${BUILD:-build}
PY=/usr/bin/python3
export PYTHONDONTWRITEBYTECODE=1
command -v curl >/dev/null && command -v jq >/dev/null || { echo "t_proof: FAIL: curl or jq missing (make deps installs it)"; exit 1; }
$PY -c 'import ecdsa' 2>/dev/null || { echo "t_proof: FAIL: python3-ecdsa missing (make deps)"; exit 1; }
. "$(dirname "$0")/lib_chain.sh"
chain_start
G="$dir/g.json"
p1=$(jq -r .public "$dir/p1.key")
p2=$(jq -r .public "$dir/p2.key")
N0=$(http 0)

# 1. online, saved, then offline; the saved document is the node's answer.
expect_rc 0 "$T" account "$p1" --prove --genesis "$G" --node "$N0" --save "$dir/p1.json"
for s in certificate header root path record; do grep -q "^$s *ok" "$dir/out" || fail "online: no '$s ok' line: $(cat "$dir/out")"; done
grep -q "^account $p1 after block [0-9]*: bus 2, prosumer, money_uunit [0-9]*" "$dir/out" || fail "online: no account line: $(cat "$dir/out")"
h=$(jq .height "$dir/p1.json")
[ "$(jq .header.height "$dir/p1.json")" = $((h + 1)) ] || fail "the header is not block height+1"
[ "$(jq .cert.height "$dir/p1.json")" = $((h + 1)) ] || fail "the certificate is not of block height+1"
[ "$(jq '.cert.sigs | length' "$dir/p1.json")" -ge 3 ] || fail "certificate below the quorum"
[ "$(jq -r .present "$dir/p1.json")" = true ] || fail "p1 not present"
[ "$(jq -r .record.role "$dir/p1.json")" = prosumer ] || fail "p1's decoded role"
ok "temctl verifies p1's proof from node 0 (state after block $h, header $((h + 1)))"
expect_rc 0 "$T" account "$p1" --prove --genesis "$G" --proof "$dir/p1.json" --json
[ "$(jq -r .verified "$dir/out")" = true ] && [ "$(jq '.steps | length' "$dir/out")" = 5 ] || fail "offline: $(cat "$dir/out")"
[ "$(jq .record.money_uunit "$dir/out")" = "$(jq .record.money_uunit "$dir/p1.json")" ] || fail "offline: record"
ok "temctl verifies the saved proof offline (--json: 5 steps)"
curl -s -m 20 "http://$(http 2)/v1/accounts/$p2/proof" >"$dir/p2.json"
expect_rc 0 "$T" account "$p2" --prove --genesis "$G" --proof "$dir/p2.json"
ok "a proof fetched from node 2 with curl verifies offline"

# 2. tampered copies: exit 1, the named step.
n=0
while read -r name step; do
  expect_rc 1 "$T" account "$p1" --prove --genesis "$G" --proof "$dir/t/$name.json"
  grep -q "proof refused at step $step: " "$dir/err" || fail "$name: want step $step, got: $(cat "$dir/err")"
  grep -q "^$step *FAILED" "$dir/out" || fail "$name: no '$step FAILED' line"
  n=$((n + 1))
done < <(mkdir -p "$dir/t" && $PY tests/tools/proof_tamper.py "$dir/p1.json" "$dir/t")
[ $n -ge 8 ] || fail "only $n tampered proofs"
ok "$n tampered proofs refused, each at its step (certificate, header, root, path, record)"
expect_rc 1 "$T" account "$p1" --prove --genesis "$G" --proof "$dir/p2.json"
grep -q "step record: the proof is for account $p2" "$dir/err" || fail "another account's proof: $(cat "$dir/err")"
jq '.chain_id = "another-chain"' "$G" >"$dir/g2.json"
expect_rc 1 "$T" account "$p1" --prove --genesis "$dir/g2.json" --proof "$dir/p1.json"
grep -q "step certificate: " "$dir/err" || fail "another genesis: $(cat "$dir/err")"
echo '{"cert":' >"$dir/bad.json"
expect_rc 1 "$T" account "$p1" --prove --genesis "$G" --proof "$dir/bad.json"
ok "another account's proof (record), another chain's genesis (certificate), broken JSON: exit 1"

# 3. an unknown key: 200, present false, an exclusion proof that verifies.
"$T" keygen --type meter --out "$dir/x.key" >/dev/null
x=$(jq -r .public "$dir/x.key")
expect_rc 0 "$T" account "$x" --prove --genesis "$G" --node "$(http 3)" --save "$dir/x.json"
grep -q "^account $x after block [0-9]*: absent" "$dir/out" || fail "absent: $(cat "$dir/out")"
[ "$(jq -r '.present, .record' "$dir/x.json" | tr '\n' ' ')" = "false null " ] || fail "absent: document"
jq -e '.proof.kind | test("^absent_")' "$dir/x.json" >/dev/null || fail "absent: proof kind"
jq '.present = true | .record = {"hex": "00"}' "$dir/x.json" >"$dir/x_lie.json"
expect_rc 1 "$T" account "$x" --prove --genesis "$G" --proof "$dir/x_lie.json"
grep -q "step path: " "$dir/err" || fail "absent key passed off as present: $(cat "$dir/err")"
ok "an unknown key gets a verified exclusion proof; claiming it present fails at path"

# 4. refusals of the route, and the usage.
code() { curl -s -m 20 -o "$dir/body" -w '%{http_code}' "http://$N0$1"; }
[ "$(code "/v1/accounts/zz/proof")" = 400 ] && [ "$(jq -r .code "$dir/body")" = EPUBKEY ] || fail "bad key"
[ "$(code "/v1/accounts/$p1/proof?height=1")" = 409 ] && [ "$(jq -r .code "$dir/body")" = EHEIGHT ] || fail "old height"
[ "$(code "/v1/accounts/$p1/proof?foo=1")" = 400 ] && [ "$(jq -r .code "$dir/body")" = EQUERY ] || fail "bad query"
tip=$(curl -s -m 5 "http://$N0/v1/status" | jq .height)
st=$(code "/v1/accounts/$p1/proof?height=$tip")
[ "$st" = 200 ] || { [ "$st" = 409 ] && [ "$(jq -r .code "$dir/body")" = EHEIGHT ]; } || fail "current height: $st"
expect_rc 2 "$T" account "$p1" --prove
expect_rc 0 "$T" account "$p1" --node "$N0" --json
[ "$(jq -r .pubkey "$dir/out")" = "$p1" ] || fail "plain account query"
ok "route refusals (400 EPUBKEY, 409 EHEIGHT, 400 EQUERY), usage exit 2, plain query unchanged"

# 5. a stalled chain (2 of 4 validators stopped): proofs wait for the certifying block, at most
# 8 per address (the 9th: 429 ELIMIT), and time out with 503 ETIMEOUT; once the chain moves
# again proofs are answered.
kill -STOP "${PID[n2]}" "${PID[n3]}"
sleep 1
urls=()
for _ in $(seq 1 9); do urls+=("http://$N0/v1/accounts/$p1/proof"); done
curl -s -m 40 -Z --parallel-immediate --parallel-max 16 -w '\n%{http_code}\n' "${urls[@]}" >"$dir/par" 2>/dev/null || true
kill -CONT "${PID[n2]}" "${PID[n3]}"
[ "$(grep -c '^503$' "$dir/par")" = 8 ] && [ "$(grep -c '^429$' "$dir/par")" = 1 ] || fail "stalled chain: $(cat "$dir/par")"
[ "$(grep -o '"code":"ETIMEOUT"' "$dir/par" | wc -l)" = 8 ] && [ "$(grep -o '"code":"ELIMIT"' "$dir/par" | wc -l)" = 1 ] ||
  fail "stalled chain codes: $(cat "$dir/par")"
h0=$(curl -s -m 5 "http://$N0/v1/status" | jq .height)
end=$((SECONDS + 60))
until [ "$(curl -s -m 5 "http://$N0/v1/status" | jq .height)" -gt "$h0" ]; do
  [ $SECONDS -lt $end ] || fail "the chain did not resume"
  sleep 0.2
done
expect_rc 0 "$T" account "$p1" --prove --genesis "$G" --node "$N0"
ok "stalled chain: 8 proofs wait and time out (503 ETIMEOUT), the 9th of one address is 429 ELIMIT; resumed: verified"
echo "ok - t_proof: $passed checks [${SECONDS}s]"
