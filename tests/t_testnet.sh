#!/bin/bash
# t_testnet.sh: `make testnet` as a test. Runs 8 slots of 2 s with 32 prosumers on case33bw and
# --exit, then checks: exit status 0; the report's dataset says all 5 nodes agreed and money
# was conserved; every temd it started is gone. Then it restarts the 5 nodes from their data
# dirs and, independently of temctl, with curl and jq: all nodes reach one height and state
# root, the trades the chain lists (/v1/trades, or the order receipts' fills where the node
# does not serve it) add up to the report's totals, and the genesis money is still all there.
# Bounded: every wait has a deadline; every process it starts is killed by pid.
set -u
BUILD=${BUILD:-build}
ver=$("$BUILD/temd" --version 2>/dev/null | head -1)
if [[ $ver != temd\ * ]]; then
    # A broken build is a failure, not a reason to skip (issue #12).
    echo "FAIL: $BUILD/temd --version does not report a node (got '$ver')"
    exit 1
fi
for tool in curl jq; do
    command -v $tool >/dev/null || { echo "FAIL: $tool is missing (make deps installs it)"; exit 1; }
done

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

base=$((27000 + (RANDOM % 40) * 200))
dir=$tmp/tn
set -o pipefail
timeout 170 make --no-print-directory -s BUILD="$BUILD" testnet \
    ARGS="--slots 8 --slot-seconds 2 --exit --dir $dir --report $tmp/report.html --base-port $base" \
    >"$tmp/out.txt" 2>"$tmp/err.txt"
rc=$?
[ $rc -eq 0 ] || { tail -30 "$tmp/err.txt"; fail "make testnet exited $rc"; }
grep -q "^trades " "$tmp/out.txt" || fail "no summary printed"
grep -q "<svg" "$tmp/report.html" || fail "report has no SVG chart"
grep -qi "<script" "$tmp/report.html" && fail "report contains a script"
data=$dir/testnet-data.json
[ "$(jq -r .agreement.agree "$data")" = true ] || fail "nodes did not agree: $(jq -c .agreement "$data")"
[ "$(jq -r .conservation.money_conserved "$data")" = true ] || fail "money not conserved: $(jq -c .conservation "$data")"
[ "$(jq -r .conservation.tokens_conserved "$data")" = true ] || fail "tokens: $(jq -c .conservation "$data")"
trades=$(jq .totals.trades "$data")
energy=$(jq .totals.energy_wh "$data")
[ "$trades" -gt 0 ] || fail "no trades"
echo "report: $trades trades, $energy Wh, $(jq .blocks "$data") blocks"
# Every temd testnet run started has stopped.
for p in $(grep -o 'pid [0-9]*' "$tmp/err.txt" | awk '{print $2}'); do
    kill -0 "$p" 2>/dev/null && fail "temd pid $p still runs after --exit"
done

# Restart the nodes from their data dirs and read the chain back without temctl.
for i in 0 1 2 3 4; do
    "$BUILD/temd" --config "$dir/node$i.conf" >>"$dir/node$i/restart.log" 2>&1 &
    pids+=($!)
done
# api NODE PATH [curl options...]
api() { local i=$1 p=$2; shift 2; curl -s --max-time 5 "$@" "http://127.0.0.1:$((base + 100 + i))$p"; }
deadline=$((SECONDS + 60))
while :; do
    st=$(for i in 0 1 2 3 4; do api $i /v1/status | jq -r '"\(.height) \(.state_root)"' 2>/dev/null; done | sort -u)
    n=$(echo "$st" | grep -c . )
    h=$(echo "$st" | head -1 | cut -d' ' -f1)
    [ "$n" = 1 ] && [ -n "$h" ] && [ "$h" != null ] && [ "$h" -ge "$(jq .blocks "$data")" ] && break
    [ $SECONDS -lt $deadline ] || fail "restarted nodes do not agree: $st"
    sleep 0.5
done
echo "restarted: 5 nodes at height $h with one state root"

first=$(jq .first_slot "$data")
slots=$(jq .slots "$data")
sum_n=0 sum_wh=0
if [ "$(api 0 "/v1/trades?slot=$first" -o /dev/null -w '%{http_code}')" = 200 ]; then
    for s in $(seq "$first" $((first + slots - 1))); do
        t=$(api 0 "/v1/trades?slot=$s")
        sum_n=$((sum_n + $(echo "$t" | jq '[.trades[] | select(.quantity_wh > 0)] | length')))
        sum_wh=$((sum_wh + $(echo "$t" | jq '[.trades[].quantity_wh] | add // 0')))
    done
    src="/v1/trades"
else
    # Each CDA trade is a fill in the receipt of the order that took liquidity.
    for b in $(seq 1 "$h"); do
        for id in $(api 0 "/v1/blocks/$b" | jq -r '.txids[]?'); do
            r=$(api 0 "/v1/tx/$id")
            sum_n=$((sum_n + $(echo "$r" | jq '[.receipt.fills[]? | select(.quantity_wh > 0)] | length')))
            sum_wh=$((sum_wh + $(echo "$r" | jq '[.receipt.fills[]?.quantity_wh] | add // 0')))
        done
    done
    src="receipts"
fi
[ "$sum_n" = "$trades" ] || fail "chain lists $sum_n trades ($src), report says $trades"
[ "$sum_wh" = "$energy" ] || fail "chain trades carry $sum_wh Wh ($src), report says $energy"
echo "chain ($src): $sum_n trades, $sum_wh Wh = report"

money0=$(jq '[.participants[].money_uunit] | add' "$dir/genesis.json")
money1=0
for k in $(jq -r '.participants[] | select(.role != "meter") | .pubkey' "$dir/genesis.json"); do
    m=$(api 0 "/v1/accounts/$k" | jq '.money_uunit + .escrow_uunit')
    money1=$((money1 + m))
done
[ "$money0" = "$money1" ] || fail "money: genesis $money0, now $money1"
echo "money conserved: $money1 uunit"

# A node stops cleanly on SIGTERM: exit status 0, not a crash on the way out.
for k in "${!pids[@]}"; do kill -TERM "${pids[$k]}" 2>/dev/null; done
for k in "${!pids[@]}"; do
    p=${pids[$k]}
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null   # still there after 10 s: that is a failure too (status 137)
    wait "$p" 2>/dev/null
    rc=$?
    if [ $rc -ne 0 ]; then
        tail -40 "$dir/node$k/restart.log"
        fail "node$k exited with status $rc on SIGTERM"
    fi
done
pids=()
echo "restarted nodes stopped cleanly"
echo "PASS t_testnet"
