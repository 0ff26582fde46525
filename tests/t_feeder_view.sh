#!/usr/bin/env bash
# The DSO's view of a slot, GET /v1/feeder/slots/{s} (issue #16 item 6), on a 4-validator chain
# with a 3-bus feeder whose line 2-3 is weak (20 kVA): a seller at bus 3 sells across it to
# buyers at bus 2 in the continuous auction. The view must name line 2-3 binding at its limit,
# its curtailed Wh must equal the sum of /v1/trades' curtailed_wh (every fill carries
# curtailed_wh and binding, the blocked one too), voltages stay in band, fees add up to the
# trades'; the same view after gate closure (from the node's records) and after settlement;
# 400 for a bad slot, 404 before a feeder is installed and for a slot never recorded. Then a
# call-auction chain: the clearing at gate closure curtails, and the view agrees with /v1/trades.
# Every process is started here, tracked by pid and killed on exit; every wait is bounded.
set -euo pipefail
B=${BUILD:-build}
T="$B/temctl"
D="$B/temd"
for c in curl jq; do command -v $c >/dev/null || { echo "t_feeder_view: FAIL: $c missing (make deps installs it)"; exit 1; }; done
dir=$(mktemp -d /tmp/tem-fv-XXXXXX)
. "$(dirname "$0")/lib_proc.sh"

base=$((15000 + ($$ % 400) * 20))
peer() { echo "127.0.0.1:$((base + $1))"; }
http() { echo "127.0.0.1:$((base + 10 + $1))"; }

for i in 0 1 2 3; do "$T" keygen --type validator --out "$dir/v$i.key" >/dev/null; done
for k in admin util dso p1 p2 p3; do "$T" keygen --type meter --out "$dir/$k.key" >/dev/null; done
args=()
for i in 0 1 2 3; do args+=(--validator "v$i:$dir/v$i.key:$(peer $i)@$(http $i)"); done
SLOT_MS=10000
"$T" genesis --chain-id tem-fv --time-ms $(( $(date +%s) * 1000 )) "${args[@]}" --admin "$dir/admin.key" \
  --participant "$dir/p1.key:3:prosumer:100000000000" --participant "$dir/p2.key:2:prosumer:100000000000" \
  --participant "$dir/p3.key:2:prosumer:100000000000" \
  --participant "$dir/util.key:1:utility:0" --participant "$dir/dso.key:1:dso:0" \
  --tariff 0:300000:80000 --slot-ms $SLOT_MS --gate-closure-ms 2000 --settlement-deadline-ms 3000 \
  --seller-collateral-ppm 0 --network-fee 100000 --out "$dir/g.json" 2>/dev/null || fail "genesis"
mkdir -p "$dir/feeder"
cat >"$dir/feeder/buses.csv" <<'EOF'
bus,type,pd_kw,qd_kvar,vmin_pu,vmax_pu,base_kv
1,slack,0,0,1,1,12.66
2,pq,5,1,0.9,1.1,12.66
3,pq,5,1,0.9,1.1,12.66
EOF
cat >"$dir/feeder/lines.csv" <<'EOF'
from,to,r_ohm,x_ohm,rate_kva
1,2,0.0922,0.047,10000
2,3,0.366,0.1864,20
EOF
start_validators n "$dir"
N="http://$(http 2)"
wait_blocks "$N" 2 cluster

code() { curl -s -o "$dir/body" -w '%{http_code}' "$N$1"; }
err() { jq -r .code "$dir/body"; }
open_slot() { curl -s "$N/v1/status" | jq .clock.next_open_slot; }

# ---- 1. refusals: a bad slot is 400; no feeder yet is 404 ENOFEEDER
[ "$(code /v1/feeder/slots/abc)" = 400 ] && [ "$(err)" = ESLOT ] || fail "slot 'abc': $(cat "$dir/body")"
[ "$(code /v1/feeder/slots/99999999999999999999999)" = 400 ] || fail "huge slot: $(cat "$dir/body")"
[ "$(code /v1/feeder/slots/-1)" = 400 ] || fail "slot -1: $(cat "$dir/body")"
[ "$(code /v1/feeder/slots/)" = 400 ] || fail "empty slot: $(cat "$dir/body")"
[ "$(code /v1/feeder/slots)" = 404 ] && [ "$(err)" = ENOTFOUND ] || fail "/v1/feeder/slots: $(cat "$dir/body")"
[ "$(code '/v1/feeder?x=1')" = 200 ] || fail "/v1/feeder with a query: $(cat "$dir/body")"
s_open=$(( $(open_slot) + 1 ))
[ "$(code /v1/feeder/slots/$s_open)" = 404 ] && [ "$(err)" = ENOFEEDER ] || fail "no feeder yet: $(cat "$dir/body")"
ok "bad slots are 400 ESLOT; with no feeder installed an open slot is 404 ENOFEEDER"

"$T" feeder install "$dir/feeder" --key "$dir/admin.key" --chain-id tem-fv --nonce 0 --margin 0 --out "$dir/feeder.bin" >/dev/null
"$T" submit --node "$N" --file "$dir/feeder.bin" --wait >/dev/null || fail "feeder install refused"
[ "$(curl -s "$N/v1/feeder" | jq .installed)" = true ] || fail "feeder not installed"
# slot 0 closed before the node recorded any slot (and before the feeder): never recorded
[ "$(code /v1/feeder/slots/0)" = 404 ] && [ "$(err)" = ENOTRECORDED ] || fail "slot 0: $(cat "$dir/body")"
ok "feeder installed; slot 0, closed before it, is 404 ENOTRECORDED"

# ---- 2. an empty open slot: the base case alone, within every limit
slot=$(( $(open_slot) + 2 ))
[ "$(code /v1/feeder/slots/$slot)" = 200 ] || fail "empty slot view: $(cat "$dir/body")"
cp "$dir/body" "$dir/empty.json"
jq -e '.solved and .open and (.lines | length) == 2 and (.buses | length) == 3 and .base_case.p_w == 10000
       and .base_case.q_var == 2000 and .curtailed_wh == 0 and (.binding | length) == 0
       and ([.lines[] | select(.binding)] | length) == 0 and ([.buses[].traded_wh] | add) == 0' "$dir/empty.json" >/dev/null ||
  fail "empty slot view: $(cat "$dir/empty.json")"
l23=$(jq '.lines[] | select(.from == 2 and .to == 3) | .loading_ppm' "$dir/empty.json")
# 5 kW + 1 kvar at bus 3 over a 20 kVA line: about 255,000 ppm
[ "$l23" -gt 250000 ] && [ "$l23" -lt 262000 ] || fail "base-case loading of line 2-3: $l23 ppm"
ok "empty slot $slot: base case 10 kW / 2 kvar, line 2-3 at $l23 ppm, nothing binding"

# ---- 3. trades across line 2-3: the seller at bus 3, buyers at bus 2
sub() { "$T" submit --node "$N" --key "$dir/$1.key" --wait --json order --slot "$slot" "${@:2}" >"$dir/sub.out" 2>&1 || fail "order $*: $(cat "$dir/sub.out")"; }
sub p1 --side sell --price 100000 --qty 300
sub p2 --side buy --price 200000 --qty 100  # partly curtailed at line 2-3's rating
sub p3 --side buy --price 200000 --qty 100  # the line is full: blocked entirely
curl -s "$N/v1/trades?slot=$slot" >"$dir/trades.json"
curl -s "$N/v1/feeder/slots/$slot" >"$dir/view.json"
jq -e '.trades | length > 0 and all(has("curtailed_wh") and has("binding"))' "$dir/trades.json" >/dev/null ||
  fail "a fill without curtailed_wh/binding: $(cat "$dir/trades.json")"
moved=$(jq '[.trades[] | select(.quantity_wh > 0)] | length' "$dir/trades.json")
blocked=$(jq '[.trades[] | select(.quantity_wh == 0)] | length' "$dir/trades.json")
tcut=$(jq '[.trades[].curtailed_wh] | add' "$dir/trades.json")
[ "$moved" -ge 1 ] && [ "$blocked" -ge 1 ] && [ "$tcut" -gt 0 ] || fail "want a curtailed trade and a blocked fill: $(cat "$dir/trades.json")"
jq -e '[.trades[] | select(.curtailed_wh > 0) | .binding] | all(. == "line 2-3")' "$dir/trades.json" >/dev/null ||
  fail "a curtailment not bound by line 2-3: $(cat "$dir/trades.json")"
ok "/v1/trades: $moved trade(s) and $blocked blocked fill(s), every fill with curtailed_wh and binding, $tcut Wh curtailed at line 2-3"

AUCTION=continuous TR="$dir/trades.json"
check_view() { # FILE what (AUCTION: the curtailments' auction, TR: the slot's /v1/trades)
  local f=$1 what=$2
  jq -e '.solved and .binding == ["line 2-3"]' "$f" >/dev/null || fail "$what: binding: $(cat "$f")"
  local lp; lp=$(jq '.lines[] | select(.from == 2 and .to == 3) | select(.binding) | .loading_ppm' "$f")
  LP=$lp
  [ -n "$lp" ] && [ "$lp" -ge 990000 ] && [ "$lp" -le 1000000 ] || fail "$what: binding line 2-3 at '$lp' ppm, not at its limit"
  [ "$(jq '.lines[] | select(.from == 2 and .to == 3) | .loading_permille' "$f")" = $((lp / 1000)) ] || fail "$what: permille"
  [ "$(jq .max_loading.line "$f")" = '"line 2-3"' ] || fail "$what: max_loading $(jq -c .max_loading "$f")"
  [ "$(jq .curtailed_wh "$f")" = "$tcut" ] || fail "$what: curtailed_wh $(jq .curtailed_wh "$f") != trades' $tcut"
  [ "$(jq '[.curtailments[].curtailed_wh] | add' "$f")" = "$tcut" ] || fail "$what: curtailments list"
  jq -e --arg a "$AUCTION" 'all(.curtailments[]; .auction == $a and .binding == "line 2-3")' "$f" >/dev/null || fail "$what: curtailments"
  jq -e 'all(.buses[] | select(.slack | not); .v_npu >= .vmin_npu and .v_npu <= .vmax_npu and .vmin_npu >= 900000000 and .vmax_npu <= 1100000000)' "$f" >/dev/null ||
    fail "$what: a voltage out of band: $(jq -c .buses "$f")"
  # what the trades moved: bus 3 injects, bus 2 withdraws, both equal to the traded Wh
  local tw; tw=$(jq '[.trades[].quantity_wh] | add' "$TR")
  jq -e --argjson tw "$tw" '(.buses[] | select(.bus == 3) | .traded_wh) == $tw and (.buses[] | select(.bus == 2) | .traded_wh) == -$tw and .traded_wh == $tw' "$f" >/dev/null ||
    fail "$what: traded Wh per bus, want $tw: $(jq -c .buses "$f")"
  local fees; fees=$(jq '[.trades[] | select(.quantity_wh > 0) | .buyer_fee_uunit + (if .seller_fee_uunit > 0 then .seller_fee_uunit else 0 end)] | add' "$TR")
  jq -e --argjson f "$fees" '.fees.total_uunit == $f and .fees.network_uunit + .fees.loss_charge_uunit == $f and .fees.network_uunit > 0' "$f" >/dev/null ||
    fail "$what: fees want $fees: $(jq -c .fees "$f")"
}
check_view "$dir/view.json" "open slot"
lp=$LP
jq -e '.open and .source == "state"' "$dir/view.json" >/dev/null || fail "open view source"
ok "open slot $slot: line 2-3 binding at $lp ppm, curtailed $tcut Wh = the trades', voltages in band, fees match"

# ---- 4. after gate closure: the node's record, the same answer
end=$((SECONDS + 40))
while :; do
  curl -s "$N/v1/feeder/slots/$slot" >"$dir/closed.json"
  [ "$(jq .open "$dir/closed.json")" = false ] && break
  [ $SECONDS -lt $end ] || fail "slot $slot did not close"
  sleep 0.5
done
check_view "$dir/closed.json" "closed slot"
lp2=$LP
jq -e '.source == "record"' "$dir/closed.json" >/dev/null || fail "closed view source: $(jq .source "$dir/closed.json")"
[ "$(jq -c '[.lines, .buses]' "$dir/closed.json")" = "$(jq -c '[.lines, .buses]' "$dir/view.json")" ] || fail "the closed slot's view differs from the open one"
ok "after gate closure the recorded view is the same (line 2-3 at $lp2 ppm)"

# ---- 5. after settlement: the trades come from the archive, the view from the record; every
# node gives the same answer
end=$((SECONDS + 60))
while [ "$(curl -s "$N/v1/trades?slot=$slot" | jq -r .source)" != archive ]; do
  [ $SECONDS -lt $end ] || fail "slot $slot was not settled"
  sleep 0.5
done
curl -s "$N/v1/trades?slot=$slot" >"$dir/trades2.json"
[ "$(jq '[.trades[].curtailed_wh] | add' "$dir/trades2.json")" = "$tcut" ] || fail "archived trades lost curtailed_wh: $(cat "$dir/trades2.json")"
curl -s "$N/v1/feeder/slots/$slot" >"$dir/settled.json"
check_view "$dir/settled.json" "settled slot"
for i in 0 1 3; do
  curl -s "http://$(http $i)/v1/feeder/slots/$slot" >"$dir/other.json"
  [ "$(jq -cS 'del(.height)' "$dir/other.json")" = "$(jq -cS 'del(.height)' "$dir/settled.json")" ] || fail "node $i's view differs"
done
ok "settled slot: archived trades keep curtailed_wh, the view is unchanged and the same on all 4 nodes"
# ---- 6. the same in a call-auction market: the clearing at gate closure curtails, the view
# takes its curtailments from the state
for i in 0 1 2 3; do kill -TERM "${PID[n$i]}"; wait "${PID[n$i]}" 2>/dev/null || true; unset "PID[n$i]"; done
base=$((base + 40))
mkdir -p "$dir/c"
args=()
for i in 0 1 2 3; do args+=(--validator "v$i:$dir/v$i.key:$(peer $i)@$(http $i)"); done
"$T" genesis --chain-id tem-fv --time-ms $(( $(date +%s) * 1000 )) "${args[@]}" --admin "$dir/admin.key" \
  --participant "$dir/p1.key:3:prosumer:100000000000" --participant "$dir/p2.key:2:prosumer:100000000000" \
  --participant "$dir/p3.key:2:prosumer:100000000000" \
  --participant "$dir/util.key:1:utility:0" --participant "$dir/dso.key:1:dso:0" \
  --tariff 0:300000:80000 --slot-ms $SLOT_MS --gate-closure-ms 2000 --settlement-deadline-ms 3000 \
  --seller-collateral-ppm 0 --network-fee 100000 --mechanism call --out "$dir/c/g.json" 2>/dev/null || fail "genesis (call)"
start_validators c "$dir/c"
N="http://$(http 2)"
wait_blocks "$N" 2 "call-auction cluster"
"$T" feeder install "$dir/feeder" --key "$dir/admin.key" --chain-id tem-fv --nonce 0 --margin 0 --out "$dir/c/feeder.bin" >/dev/null
"$T" submit --node "$N" --file "$dir/c/feeder.bin" --wait >/dev/null || fail "feeder install refused (call)"
slot=$(( $(open_slot) + 1 ))
sub p1 --side sell --price 100000 --qty 300
sub p2 --side buy --price 200000 --qty 100
sub p3 --side buy --price 190000 --qty 100
curl -s "$N/v1/feeder/slots/$slot" >"$dir/c_open.json"
jq -e '.open and .curtailed_wh == 0 and .binding == [] and .traded_wh == 0' "$dir/c_open.json" >/dev/null ||
  fail "call auction before its clearing: $(jq -c 'del(.lines, .buses)' "$dir/c_open.json")"
end=$((SECONDS + 40))
while :; do
  curl -s "$N/v1/feeder/slots/$slot" >"$dir/c_closed.json"
  [ "$(jq .open "$dir/c_closed.json")" = false ] && break
  [ $SECONDS -lt $end ] || fail "slot $slot did not close (call)"
  sleep 0.5
done
curl -s "$N/v1/trades?slot=$slot" >"$dir/c_trades.json"
jq -e '.trades | length > 0 and all(has("curtailed_wh") and has("binding"))' "$dir/c_trades.json" >/dev/null ||
  fail "call auction: a trade without curtailed_wh/binding: $(cat "$dir/c_trades.json")"
tcut=$(jq '[.trades[].curtailed_wh] | add' "$dir/c_trades.json")
[ "$tcut" -gt 0 ] || fail "the call auction's clearing was not curtailed: $(cat "$dir/c_trades.json")"
AUCTION=call TR="$dir/c_trades.json"
check_view "$dir/c_closed.json" "call auction"
ok "call auction: its clearing curtailed $tcut Wh at line 2-3 ($LP ppm), the view and /v1/trades agree"

# ---- 7. every answer above against docs/openapi.yaml (t_openapi.sh's chain has no feeder)
/usr/bin/python3 - "$dir" <<'PY' || fail "responses do not match docs/openapi.yaml"
import json, sys, yaml
from jsonschema import Draft202012Validator, RefResolver
spec = yaml.safe_load(open("docs/openapi.yaml"))
res = RefResolver.from_schema(spec)
sch = spec["components"]["schemas"]
trades = spec["paths"]["/v1/trades"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
bad = 0
for f, s in [("empty.json", sch["FeederSlot"]), ("view.json", sch["FeederSlot"]), ("closed.json", sch["FeederSlot"]),
             ("settled.json", sch["FeederSlot"]), ("c_open.json", sch["FeederSlot"]), ("c_closed.json", sch["FeederSlot"]),
             ("trades.json", trades), ("trades2.json", trades), ("c_trades.json", trades)]:
    for e in list(Draft202012Validator(s, resolver=res).iter_errors(json.load(open(sys.argv[1] + "/" + f))))[:3]:
        print("%s: %s at %s" % (f, e.message[:200], "/".join(map(str, e.path))))
        bad += 1
sys.exit(1 if bad else 0)
PY
ok "the views and trade lists match docs/openapi.yaml"
echo "t_feeder_view: $passed passed"
