#!/usr/bin/env bash
# temctl against a running 4-validator cluster on 127.0.0.1 (issue #17, temctl items): readable
# tables by default and --json; one default node address ($TEMCTL_NODE, else 127.0.0.1:26700);
# libcurl for every call, https included (temd with a self-signed TLS certificate, trusted
# through TEMCTL_CA_FILE); a usage text per verb; --version; exit 1 for an unknown txid or
# account, 2 for a verb without its argument.
# Every process is started here, tracked by pid and killed on exit; every wait is bounded.
set -euo pipefail
B=${BUILD:-build}
T="$B/temctl"
D="$B/temd"
for c in curl jq openssl; do command -v $c >/dev/null || { echo "t_temctl: FAIL: $c missing (make deps installs it)"; exit 1; }; done
"$T" --version | grep -Eq '^temctl [0-9]+\.[0-9]+\.[0-9]+$' || { echo "t_temctl: FAIL: temctl --version"; exit 1; }
dir=$(mktemp -d /tmp/tem-temctl-XXXXXX)
. "$(dirname "$0")/lib_proc.sh"

# Ports below the kernel's ephemeral range (32768-60999), spread by pid.
base=$((12000 + ($$ % 500) * 20))
peer() { echo "127.0.0.1:$((base + $1))"; }
http() { echo "127.0.0.1:$((base + 10 + $1))"; }

openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/tls.key" -out "$dir/tls.crt" -days 2 \
  -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" >/dev/null 2>&1 || fail "openssl could not make a certificate"
for i in 0 1 2 3; do "$T" keygen --type validator --out "$dir/v$i.key" >/dev/null; done
for k in admin util dso p1 p2; do "$T" keygen --type meter --out "$dir/$k.key" >/dev/null; done
args=()
for i in 0 1 2 3; do args+=(--validator "v$i:$dir/v$i.key:$(peer $i)@$(http $i)"); done
"$T" genesis --chain-id tem-temctl --time-ms $(( $(date +%s) * 1000 )) "${args[@]}" --admin "$dir/admin.key" \
  --participant "$dir/p1.key:2:prosumer:100000000000" --participant "$dir/p2.key:3:prosumer:100000000000" \
  --participant "$dir/util.key:1:utility:0" --participant "$dir/dso.key:1:dso:0" \
  --tariff 0:300000:80000 --slot-ms 60000 --out "$dir/g.json" 2>/dev/null
for i in 0 1 2 3; do
  tls=()
  [ $i = 0 ] && tls=(--tls-cert "$dir/tls.crt" --tls-key "$dir/tls.key")
  "$D" --data-dir "$dir/n$i" --genesis "$dir/g.json" --key "$dir/v$i.key" "${tls[@]}" --log-level info 2>>"$dir/n$i.log" &
  PID[n$i]=$!
done
N1="http://$(http 1)"
for _ in $(seq 1 150); do
  h=$(curl -s -m 1 "$N1/v1/status" | jq -r .height 2>/dev/null || echo 0)
  [ "${h:-0}" -ge 2 ] 2>/dev/null && break
  sleep 0.2
done
[ "${h:-0}" -ge 2 ] || fail "cluster did not commit 2 blocks"

# genesis: without --time-ms the chain starts now, at a slot boundary; one validator is refused
# with the reason unless --offline says the genesis is for offline tools.
now=$(( $(date +%s) * 1000 ))
expect_rc 0 "$T" genesis --chain-id t "${args[@]}" --admin "$dir/admin.key" --tariff 0:1:1 --slot-ms 60000
jq -e --argjson now "$now" '.genesis_time_ms % 60000 == 0 and .genesis_time_ms <= $now + 1000 and .genesis_time_ms > $now - 61000' "$dir/out" >/dev/null ||
  fail "default genesis_time_ms is not now at a slot start: $(jq .genesis_time_ms "$dir/out")"
expect_rc 1 "$T" genesis --chain-id t --validator "v0:$dir/v0.key:127.0.0.1:1" --tariff 0:1:1
grep -q 'pBFT needs at least 4' "$dir/err" || fail "one-validator genesis refused without the reason: $(cat "$dir/err")"
expect_rc 0 "$T" genesis --offline --chain-id t --validator "v0:$dir/v0.key:127.0.0.1:1" --tariff 0:1:1
ok "genesis: time defaults to now at a slot start; one validator refused with the reason (--offline allows it)"

# Readable by default, one JSON line with --json; both name the same height.
expect_rc 0 "$T" status --node "$N1"
grep -Eq '^height +[0-9]+$' "$dir/out" || fail "status table has no height line: $(head -5 "$dir/out")"
expect_rc 0 "$T" status --node "$N1" --json
[ "$(wc -l <"$dir/out")" = 1 ] && jq -e '.height >= 2' "$dir/out" >/dev/null || fail "status --json is not one JSON line"
ok "status: readable table by default, one JSON line with --json"

# The default node comes from $TEMCTL_NODE.
expect_rc 0 env TEMCTL_NODE="$(http 1)" "$T" status --json
jq -e .height "$dir/out" >/dev/null || fail "TEMCTL_NODE not used"
ok "TEMCTL_NODE names the default node"

# A tx through temctl submit, then its receipt as a table and as JSON.
expect_rc 0 "$T" submit --node "$N1" --key "$dir/p1.key" --wait --json transfer --to "$(jq -r .public "$dir/p2.key")" --amount 5
jq -e '.status == "committed"' "$dir/out" >/dev/null || fail "submit --wait --json: $(cat "$dir/out")"
txid=$(jq -r .txid "$dir/out")
expect_rc 0 "$T" tx --node "$N1" "$txid"
grep -Eq '^status +committed$' "$dir/out" || fail "tx table: $(head -5 "$dir/out")"
ok "submit --wait commits; tx prints the receipt"

# Unknown txid or account: exit 1. Missing argument: exit 2 with that verb's usage.
expect_rc 1 "$T" tx --node "$N1" "$(printf '%064d' 0)"
expect_rc 1 "$T" account --node "$N1" "02$(printf '%064d' 7)"
expect_rc 2 "$T" block --node "$N1"
grep -q 'usage: temctl block' "$dir/err" || fail "block without HEIGHT does not print block's usage"
grep -q 'usage: temctl submit' "$dir/err" && fail "block's usage lists other verbs"
expect_rc 0 "$T" block --node "$N1" 1
grep -Eq '^(header\.)?height +1$' "$dir/out" || fail "block 1 table: $(head -8 "$dir/out")"
ok "unknown txid and account exit 1; block without a height exits 2 with its usage"

# https: node 0 serves TLS; temctl verifies it against the CA file, refuses it without.
expect_rc 0 env TEMCTL_CA_FILE="$dir/tls.crt" "$T" status --node "https://$(http 0)" --json
jq -e '.height >= 1' "$dir/out" >/dev/null || fail "https status"
expect_rc 1 "$T" status --node "https://$(http 0)"
ok "https: verified with TEMCTL_CA_FILE, refused with an unknown CA"

# replay (an auditor's check) on a copy of a stopped validator's data dir: passes as stored;
# one edited receipt fails naming its height and tx, though every header still agrees; a
# mistyped data dir is an error and nothing is created there.
kill -TERM "${PID[n2]}"; wait "${PID[n2]}" 2>/dev/null || true; unset 'PID[n2]'
cp -r "$dir/n2" "$dir/audit"
expect_rc 0 "$T" replay "$dir/audit" --genesis "$dir/g.json"
grep -q '"ok":true' "$dir/out" || fail "replay of an untouched data dir: $(cat "$dir/out")"
/usr/bin/python3 - "$dir/audit" "$txid" <<'PY' || fail "could not edit the stored receipt"
import sys, lmdb
env = lmdb.open(sys.argv[1], max_dbs=16, subdir=True)
txs, rcs = env.open_db(b"txs", create=False), env.open_db(b"receipts", create=False)
with env.begin(write=True) as t:
    idx = t.get(bytes.fromhex(sys.argv[2]), db=txs)
    r = bytearray(t.get(idx, db=rcs))
    r[-1] ^= 1
    t.put(idx, bytes(r), db=rcs)
PY
height=$(jq -r '.height' <<<"$("$T" tx --node "$N1" --json "$txid")")
expect_rc 1 "$T" replay "$dir/audit" --genesis "$dir/g.json"
jq -e ".ok == false and .height == $height" "$dir/out" >/dev/null || fail "replay of an edited receipt: $(cat "$dir/out")"
grep -q "$txid" "$dir/out" || fail "replay does not name the edited tx: $(cat "$dir/out")"
expect_rc 1 "$T" replay "$dir/no-such-dir" --genesis "$dir/g.json"
[ ! -e "$dir/no-such-dir" ] || fail "replay created a store at a mistyped path"
ok "replay: passes as stored, an edited receipt fails at height $height naming the tx, a mistyped path creates nothing"

# testnet: refuses to start without --dir; names a port another chain serves before starting
# anything; Ctrl-C in the middle writes the summary and the report of the slots that ran, in DIR.
expect_rc 2 "$T" testnet run
grep -q -- '--dir DIR is required' "$dir/err" || fail "testnet run without --dir: $(cat "$dir/err")"
expect_rc 1 "$T" testnet run --dir "$dir/tn-busy" --base-port $((base + 11 - 100)) --exit --quiet
grep -q "port $((base + 11)) already serves chain tem-temctl" "$dir/err" || fail "busy port not named: $(cat "$dir/err")"
[ ! -e "$dir/tn-busy/node0" ] || fail "testnet started work although a port was busy"
ok "testnet run: --dir required; a port another chain serves is named before anything starts"

tb=$((base + 200))
"$T" testnet run --dir "$dir/tn" --base-port $tb --slots 30 --slot-seconds 1 --prosumers 8 --exit \
  >"$dir/tn.out" 2>"$dir/tn.err" &
tpid=$!; PID[testnet]=$tpid
# Ctrl-C once at least one slot's readings are in (the progress line counts them).
for _ in $(seq 1 900); do grep -q 'readings for [1-9]' "$dir/tn.err" 2>/dev/null && break; sleep 0.1; done
grep -q 'readings for [1-9]' "$dir/tn.err" || fail "testnet read no slot in 90 s: $(tail -5 "$dir/tn.err")"
kill -INT $tpid
for _ in $(seq 1 900); do kill -0 $tpid 2>/dev/null || break; sleep 0.1; done
kill -0 $tpid 2>/dev/null && fail "testnet run did not stop within 90 s of Ctrl-C"
unset 'PID[testnet]'
[ -s "$dir/tn/testnet-report.html" ] || fail "no report in DIR after Ctrl-C: $(tail -5 "$dir/tn.err")"
jq -e '.interrupted == true and .slots >= 1 and .slots < 30' "$dir/tn/testnet-data.json" >/dev/null || fail "dataset after Ctrl-C: $(jq -c '{interrupted, slots}' "$dir/tn/testnet-data.json")"
grep -q '^INTERRUPTED' "$dir/tn.out" || fail "summary does not say it was interrupted"
pgrep -f "temd --config $dir/tn/" >/dev/null && fail "temd processes of the testnet survived Ctrl-C"
ok "testnet run: Ctrl-C after $(jq .slots "$dir/tn/testnet-data.json") slots writes the summary and DIR/testnet-report.html"

echo "t_temctl: $passed passed, 0 failed"
