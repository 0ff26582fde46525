#!/usr/bin/env bash
# The live page GET /ui (issue #17 item 7) against a running 4-validator cluster: served with a
# strict Content-Security-Policy; opened in headless Chromium, its DOM shows the chain height,
# the slot, the book's best bid and ask, the trade count and volume and the tariff that the JSON
# API returns; a screenshot is saved. Chromium missing is a FAILURE (make deps installs it).
# Chromium runs under tests/tools/cdp.py, which closes it and waits for its pid.
# Every process is started here, tracked by pid and killed on exit; every wait is bounded.
set -euo pipefail
B=${BUILD:-build}
T="$B/temctl"
D="$B/temd"
for c in curl jq chromium; do command -v $c >/dev/null || { echo "t_ui: FAIL: $c missing (make deps installs it)"; exit 1; }; done
dir=$(mktemp -d /tmp/tem-ui-XXXXXX)
. "$(dirname "$0")/lib_proc.sh"

# Ports below the kernel's ephemeral range (32768-60999), spread by pid.
base=$((14000 + ($$ % 400) * 20))
peer() { echo "127.0.0.1:$((base + $1))"; }
http() { echo "127.0.0.1:$((base + 10 + $1))"; }

for i in 0 1 2 3; do "$T" keygen --type validator --out "$dir/v$i.key" >/dev/null; done
for k in admin util dso p1 p2; do "$T" keygen --type meter --out "$dir/$k.key" >/dev/null; done
args=()
for i in 0 1 2 3; do args+=(--validator "v$i:$dir/v$i.key:$(peer $i)@$(http $i)"); done
"$T" genesis --chain-id tem-ui --time-ms $(( $(date +%s) * 1000 )) "${args[@]}" --admin "$dir/admin.key" \
  --participant "$dir/p1.key:2:prosumer:100000000000" --participant "$dir/p2.key:3:prosumer:100000000000" \
  --participant "$dir/util.key:1:utility:0" --participant "$dir/dso.key:1:dso:0" \
  --tariff 0:300000:80000 --slot-ms 60000 --out "$dir/g.json" 2>/dev/null
start_validators n "$dir"
N="http://$(http 1)"
wait_blocks "$N" 2 cluster

# ---- 1. the page itself: HTML, strict CSP whose hashes match the inline script and style.
curl -s -m 5 -D "$dir/hdr" -o "$dir/page.html" "$N/ui" || fail "GET /ui"
grep -qi '^content-type: text/html' "$dir/hdr" || fail "/ui content type: $(cat "$dir/hdr")"
csp=$(grep -i '^content-security-policy:' "$dir/hdr" | tr -d '\r') || fail "/ui has no Content-Security-Policy"
grep -q "default-src 'self'" <<<"$csp" || fail "CSP lacks default-src 'self': $csp"
grep -q "unsafe-inline\|unsafe-eval\|http:\|https:" <<<"$csp" && fail "CSP is not strict: $csp"
grep -qi '^x-content-type-options: nosniff' "$dir/hdr" || fail "/ui lacks X-Content-Type-Options: nosniff"
cmp -s "$dir/page.html" node/ui/index.html || fail "/ui does not serve node/ui/index.html as built"
script_hash=$(python3 -c 'import sys,hashlib,base64,re; s=open(sys.argv[1]).read(); m=re.search(r"<script>(.*?)</script>",s,re.S); print(base64.b64encode(hashlib.sha256(m.group(1).encode()).digest()).decode())' "$dir/page.html")
grep -qF "script-src 'sha256-$script_hash'" <<<"$csp" || fail "CSP script hash is not the inline script's: $csp"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$N/ui/")" = 200 ] || fail "/ui/ not served"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$N/ui/x")" = 404 ] || fail "/ui/x is not 404"
[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$N/ui")" = 405 ] || fail "POST /ui is not 405"
ok "/ui is the built page, text/html with a hash-only CSP; /ui/x 404, POST 405"

# ---- 2. a 3-bus feeder (p1 at bus 2 sells to p2 at bus 3 across line 2-3), so the page has
# loadings to show; its line 2-3 carries the trades well within its rating.
mkdir -p "$dir/feeder"
printf '%s\n' bus,type,pd_kw,qd_kvar,vmin_pu,vmax_pu,base_kv 1,slack,0,0,1,1,12.66 2,pq,20,4,0.9,1.1,12.66 \
  3,pq,10,2,0.9,1.1,12.66 >"$dir/feeder/buses.csv"
printf '%s\n' from,to,r_ohm,x_ohm,rate_kva 1,2,0.0922,0.047,400 2,3,0.366,0.1864,150 >"$dir/feeder/lines.csv"
"$T" feeder install "$dir/feeder" --key "$dir/admin.key" --chain-id tem-ui --nonce 0 --out "$dir/feeder.bin" >/dev/null
"$T" submit --node "$N" --file "$dir/feeder.bin" --wait >/dev/null || fail "feeder install refused"
ok "a 3-bus feeder is installed"

# ---- 3. orders that trade, in a slot whose gate is comfortably ahead.
slot=$(( $(curl -s "$N/v1/status" | jq .clock.next_open_slot) + 2 ))
sub() { "$T" submit --node "$N" --key "$dir/$1.key" --wait --json order --slot "$slot" "${@:2}" >"$dir/sub.out" 2>&1 || fail "order $*: $(cat "$dir/sub.out")"; }
sub p1 --side sell --price 150000 --qty 2000
sub p2 --side buy --price 200000 --qty 800
sub p2 --side buy --price 180000 --qty 500
sub p2 --side buy --price 120000 --qty 400
sub p1 --side sell --price 250000 --qty 300
curl -s "$N/v1/trades?slot=$slot" >"$dir/trades.json"
curl -s "$N/v1/book/$slot" >"$dir/book.json"
curl -s "$N/v1/feeder/slots/$slot" >"$dir/view.json"
ntr=$(jq '.trades | length' "$dir/trades.json")
[ "$ntr" = 2 ] || fail "want 2 trades in slot $slot, have $ntr: $(cat "$dir/trades.json")"
ok "five orders in slot $slot: $ntr trades, a resting bid and ask"

# ---- 4. headless Chromium, driven over the DevTools pipe (tests/tools/cdp.py): the page keeps
# an EventSource open, so the test waits for conditions in the page, bounded by CDP_TIMEOUT.
export CDP_TIMEOUT=30 CDP_LOG="$dir/chromium.log"
js_val() { echo "document.getElementById('$1').dataset.value"; }
ready="document.getElementById('live').className=='on' && $(js_val trades-count)=='$ntr' && $(js_val best-bid)!='' && $(js_val max-loading)=='$(jq .max_loading.loading_ppm "$dir/view.json")'"
h0=$(curl -s "$N/v1/status" | jq .height)
shot="$dir/ui.png"
# After the first snapshot a crossing buy of 100 Wh commits; the page must show the third trade
# without being reloaded: only the event stream can tell it.
python3 tests/tools/cdp.py "$N/ui?slot=$slot" "wait:$ready" "dom:$dir/dom.html" \
  "run:curl -s $N/v1/status | jq .height >$dir/h1" \
  "run:$T submit --node $N --key $dir/p2.key --wait --json order --slot $slot --side buy --price 160000 --qty 100 >$dir/sub3.out 2>&1" \
  "wait:$(js_val trades-count)=='$((ntr + 1))' && $(js_val max-loading)!='$(jq .max_loading.loading_ppm "$dir/view.json")'" \
  "dom:$dir/dom2.html" "shot:$shot" ||
  fail "the page in Chromium did not reach: $ready, then $((ntr + 1)) trades"
h1=$(cat "$dir/h1")
val() { # FILE id -> data-value of the element with that id
  python3 -c 'import sys,re; s=open(sys.argv[1]).read(); m=re.search(r"<[^>]*\bid=\"%s\"[^>]*>" % re.escape(sys.argv[2]), s)
m or sys.exit("no element #"+sys.argv[2])
v=re.search(r"data-value=\"([^\"]*)\"", m.group(0)); print(v.group(1) if v else "")' "$1" "$2"
}
expect() { # FILE id want
  local got; got=$(val "$1" "$2") || fail "DOM has no #$2"
  [ "$got" = "$3" ] || fail "DOM #$2 is '$got', the API says '$3'"
}
hd=$(val "$dir/dom.html" height)
[ -n "$hd" ] && [ "$hd" -ge "$h0" ] && [ "$hd" -le "$h1" ] || fail "DOM height '$hd' outside the API's [$h0, $h1]"
D1="$dir/dom.html"
expect "$D1" slot "$slot"
expect "$D1" trades-count "$ntr"
expect "$D1" trades-volume "$(jq '[.trades[].quantity_wh] | add' "$dir/trades.json")"
expect "$D1" best-bid "$(jq '.bids[0].price' "$dir/book.json")"
expect "$D1" best-ask "$(jq '.asks[0].price' "$dir/book.json")"
expect "$D1" book-count "$(jq '(.bids | length) + (.asks | length)' "$dir/book.json")"
expect "$D1" tariff-retail 300000
expect "$D1" tariff-feedin 80000
expect "$D1" clearing-price "$(jq '([.trades[] | .price * .quantity_wh] | add) / ([.trades[].quantity_wh] | add) | round' "$dir/trades.json")"
expect "$D1" curtailments-total "$(curl -s "$N/v1/feeder" | jq .curtailments_total)"
ok "DOM: height $hd in [$h0,$h1], slot $slot, $ntr trades, best bid/ask, tariff, clearing price match the API"

jq -e '.status == "committed"' "$dir/sub3.out" >/dev/null || fail "third buy: $(cat "$dir/sub3.out")"
curl -s "$N/v1/trades?slot=$slot" >"$dir/trades.json"
curl -s "$N/v1/book/$slot" >"$dir/book.json"
D2="$dir/dom2.html"
expect "$D2" trades-count "$(jq '.trades | length' "$dir/trades.json")"
expect "$D2" trades-volume "$(jq '[.trades[].quantity_wh] | add' "$dir/trades.json")"
expect "$D2" best-ask "$(jq '.asks[0].price' "$dir/book.json")"
ok "a trade committed while the page is open appears through /v1/events, without a reload"

# The feeder's loading: every line the page lists (the most loaded first) shows the loading the
# slot view /v1/feeder/slots/{s} gives, the most loaded one and the binding list too; after the
# third trade, the loadings it raised.
loading_matches() { # DOM VIEW
  /usr/bin/python3 - "$1" "$2" <<'PY' || fail "the page's feeder loading does not match /v1/feeder/slots/$slot"
import json, re, sys
dom, view = open(sys.argv[1]).read(), json.load(open(sys.argv[2]))
rows = {m.group(1): (m.group(0)) for m in re.finditer(r'<tr[^>]*\bid="line-(\d+-\d+)"[^>]*>', dom)}
lines = sorted(view["lines"], key=lambda l: (-l["loading_ppm"], l["from"], l["to"]))[:12]
bad = []
if len(rows) != len(lines):
    bad.append("page lists %d lines, the view %d" % (len(rows), len(lines)))
for l in lines:
    k = "%d-%d" % (l["from"], l["to"])
    tag = rows.get(k)
    v = re.search(r'data-value="(\d+)"', tag or "")
    b = re.search(r'data-binding="(\d)"', tag or "")
    if not v or int(v.group(1)) != l["loading_ppm"] or not b or (b.group(1) == "1") != l["binding"]:
        bad.append("line %s: page %r, view %d ppm binding %s" % (k, tag, l["loading_ppm"], l["binding"]))
def val(i):
    m = re.search(r'<[^>]*\bid="%s"[^>]*>' % i, dom)
    v = m and re.search(r'data-value="([^"]*)"', m.group(0))
    return v.group(1) if v else None
if val("max-loading") != str(view["max_loading"]["loading_ppm"]) or val("max-line") != view["max_loading"]["line"]:
    bad.append("max loading: page %s %s, view %s" % (val("max-line"), val("max-loading"), view["max_loading"]))
if val("feeder-binding") != ", ".join(view["binding"]) or val("feeder-curtailed") != str(view["curtailed_wh"]):
    bad.append("binding/curtailed: page %s / %s, view %s / %s" % (val("feeder-binding"), val("feeder-curtailed"), view["binding"], view["curtailed_wh"]))
if val("feeder-vmin") != str(view["voltage_npu"]["min"]):
    bad.append("vmin: page %s, view %s" % (val("feeder-vmin"), view["voltage_npu"]["min"]))
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
}
loading_matches "$D1" "$dir/view.json"
l23=$(jq '.lines[] | select(.from == 2 and .to == 3) | .loading_ppm' "$dir/view.json")
[ "$l23" -gt 0 ] || fail "line 2-3 carries nothing: $(cat "$dir/view.json")"
curl -s "$N/v1/feeder/slots/$slot" >"$dir/view2.json"
loading_matches "$D2" "$dir/view2.json"
l23b=$(jq '.lines[] | select(.from == 2 and .to == 3) | .loading_ppm' "$dir/view2.json")
[ "$l23b" -gt "$l23" ] || fail "the third trade did not raise line 2-3's loading ($l23 -> $l23b ppm)"
ok "DOM: line loadings, the most loaded line, binding and lowest voltage match /v1/feeder/slots/$slot (line 2-3: $l23 -> $l23b ppm)"

# Without ?slot the page follows the open slot the status names (read before and after, as a
# minute boundary may pass in between).
s0=$(curl -s "$N/v1/status" | jq .clock.next_open_slot)
python3 tests/tools/cdp.py "$N/ui" "wait:$(js_val slot)!='' && $(js_val height)!=''" "dom:$dir/dom3.html" || fail "unpinned page did not load"
s1=$(curl -s "$N/v1/status" | jq .clock.next_open_slot)
sd=$(val "$dir/dom3.html" slot)
[ "$sd" = "$s0" ] || [ "$sd" = "$s1" ] || fail "unpinned page shows slot '$sd', the API's open slot is $s0..$s1"
ok "without ?slot the page shows the next open slot ($sd)"

# A slot where the grid check curtails: 4,000 Wh (240 kW) across line 2-3 (147 kVA after the
# default 2 % margin). The page marks the line binding, at its limit, as the view does.
slot2=$((slot + 1))
sub2() { "$T" submit --node "$N" --key "$dir/$1.key" --wait --json order --slot "$slot2" "${@:2}" >"$dir/sub.out" 2>&1 || fail "order $*: $(cat "$dir/sub.out")"; }
sub2 p1 --side sell --price 150000 --qty 4000
sub2 p2 --side buy --price 200000 --qty 4000
curl -s "$N/v1/feeder/slots/$slot2" >"$dir/view3.json"
jq -e '.binding == ["line 2-3"] and .curtailed_wh > 0' "$dir/view3.json" >/dev/null || fail "slot $slot2 did not bind line 2-3: $(cat "$dir/view3.json")"
shot2="$dir/ui-binding.png"
python3 tests/tools/cdp.py "$N/ui?slot=$slot2" "wait:$(js_val feeder-binding)=='line 2-3' && $(js_val max-loading)=='$(jq .max_loading.loading_ppm "$dir/view3.json")'" \
  "dom:$dir/dom4.html" "shot:$shot2" || fail "the page did not show slot $slot2's binding line"
loading_matches "$dir/dom4.html" "$dir/view3.json"
grep -q '<tr class="binding" id="line-2-3"' "$dir/dom4.html" || fail "line 2-3's row is not marked binding"
grep -Eq 'id="line-2-3"[^>]*>.*<span class="full"' "$dir/dom4.html" || fail "line 2-3's bar is not red at its limit"
expect "$dir/dom4.html" feeder-curtailed "$(jq .curtailed_wh "$dir/view3.json")"
expect "$dir/dom4.html" trades-curtailed "$(curl -s "$N/v1/trades?slot=$slot2" | jq '[.trades[].curtailed_wh] | add')"
ok "slot $slot2: the page marks line 2-3 binding at $(jq '.max_loading.loading_ppm' "$dir/view3.json") ppm, red, curtailed Wh as the API"

# ---- 5. the screenshot (copied for the docs when UI_SHOT names a path).
for f in "$shot" "$shot2"; do
  [ -s "$f" ] && [ "$(head -c 8 "$f" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "no PNG screenshot $f"
done
grep -q "Content Security Policy" "$dir/chromium.log" && fail "Chromium reports CSP violations: $(grep -m2 'Content Security Policy' "$dir/chromium.log")"
[ -n "${UI_SHOT:-}" ] && cp "$shot2" "$UI_SHOT"
ok "screenshot $(stat -c %s "$shot") bytes, no CSP violation logged"
echo "t_ui: $passed passed"
