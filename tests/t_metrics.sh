#!/usr/bin/env bash
# /metrics of a running 4-validator cluster against Prometheus' own tools (issue #17):
#   - `promtool check metrics` accepts the page (names, units, _total, HELP/TYPE);
#   - tem_build_info, process_* and one tem_peer_up series per other validator are present;
#     stopping a validator turns its tem_peer_up to 0 on the others;
#   - `promtool check rules` and `promtool test rules` accept deploy/prometheus/alerts.yml;
#   - every tem_* / process_* series that the alert rules and the Grafana dashboard query is
#     one temd exports (a renamed metric breaks this test, not a dashboard in production).
# Every process is started here, tracked by pid and killed on exit; every wait is bounded.
set -euo pipefail
B=${BUILD:-build}
T="$B/temctl"
D="$B/temd"
for c in curl jq promtool /usr/bin/python3; do command -v "$c" >/dev/null || { echo "t_metrics: FAIL: $c missing (make deps installs it)"; exit 1; }; done
dir=$(mktemp -d /tmp/tem-metrics-XXXXXX)
. "$(dirname "$0")/lib_proc.sh"

promtool check rules deploy/prometheus/alerts.yml >"$dir/rules.out" 2>&1 || fail "promtool check rules: $(cat "$dir/rules.out")"
(cd deploy/prometheus && promtool test rules alerts_test.yml) >"$dir/rtest.out" 2>&1 || fail "promtool test rules: $(cat "$dir/rtest.out")"
ok "alerts.yml: promtool check rules and its unit tests pass"

base=$((16000 + ($$ % 500) * 10))
for i in 0 1 2 3; do "$T" keygen --type validator --out "$dir/v$i.key" >/dev/null; done
"$T" keygen --type meter --out "$dir/admin.key" >/dev/null
args=()
for i in 0 1 2 3; do args+=(--validator "v$i:$dir/v$i.key:127.0.0.1:$((base + i))@127.0.0.1:$((base + 5 + i))"); done
"$T" genesis --chain-id tem-metrics --time-ms $(( $(date +%s) * 1000 )) "${args[@]}" --admin "$dir/admin.key" \
  --tariff 0:300000:80000 --slot-ms 60000 --out "$dir/g.json" 2>/dev/null
for i in 0 1 2 3; do
  "$D" --data-dir "$dir/n$i" --genesis "$dir/g.json" --key "$dir/v$i.key" 2>>"$dir/n$i.log" &
  PID[n$i]=$!
done
M="http://127.0.0.1:$((base + 5))/metrics"
for _ in $(seq 1 150); do
  curl -sf -m 1 "$M" >"$dir/m.txt" 2>/dev/null && awk '$1 == "tem_height" && $2 >= 2 {f=1} END {exit !f}' "$dir/m.txt" && break
  sleep 0.2
done
awk '$1 == "tem_height" && $2 >= 2 {f=1} END {exit !f}' "$dir/m.txt" || fail "no tem_height >= 2 on /metrics"

out=$(promtool check metrics <"$dir/m.txt" 2>&1) || fail "promtool check metrics: $out"
[ -z "$out" ] || fail "promtool check metrics warns: $out"
ok "promtool check metrics: clean"

# One synced LMDB commit a block, plus a tree checkpoint now and then and the node's own records
# when a slot closes (60 s slots here): before the feeder's progress record was written only when
# it changed, every block cost a second commit, on the loop thread.
val() { awk -v k="$1" '$1 == k {print $2}' "$dir/m.txt"; }
h0=$(val tem_height); w0=$(val tem_store_write_txns_total)
sleep 4
curl -sf -m 1 "$M" >"$dir/m.txt" || fail "/metrics"
h1=$(val tem_height); w1=$(val tem_store_write_txns_total)
dh=$((h1 - h0)); dw=$((w1 - w0))
[ "$dh" -ge 3 ] || fail "only $dh blocks in 4 s"
[ "$dw" -ge "$dh" ] && [ "$dw" -le $((dh + dh / 16 + 5)) ] || fail "$dw store write transactions for $dh blocks"
ok "tem_store_write_txns_total: $dw write transactions for $dh blocks"

grep -Eq '^tem_build_info\{version="[0-9.]+",chain_id="tem-metrics",role="validator"\} 1$' "$dir/m.txt" || fail "no tem_build_info"
for s in process_cpu_seconds_total process_resident_memory_bytes process_open_fds process_max_fds process_start_time_seconds; do
  grep -Eq "^$s [0-9.e+]+$" "$dir/m.txt" || fail "no $s"
done
[ "$(grep -c '^tem_peer_up{peer="[123]",name="v[123]"} 1$' "$dir/m.txt")" = 3 ] || fail "want tem_peer_up 1 for peers 1-3: $(grep tem_peer_up "$dir/m.txt")"
for s in tem_market_orders_total tem_market_trades_total tem_market_traded_wh_total tem_market_fees_uunits_total \
         tem_market_clearing_price_uunits_per_kwh tem_grid_curtailed_matches_total tem_grid_curtailed_wh_total; do
  grep -Eq "^$s 0$" "$dir/m.txt" || fail "no $s 0 on an idle chain"
done
grep -q '^# TYPE tem_grid_binding_total counter$' "$dir/m.txt" || fail "no tem_grid_binding_total"
ok "tem_build_info, process metrics, tem_peer_up for each of 3 peers, market and grid series"

kill -TERM "${PID[n3]}"; wait "${PID[n3]}" 2>/dev/null || true; unset 'PID[n3]'
for _ in $(seq 1 50); do
  curl -sf -m 1 "$M" >"$dir/m.txt" && grep -q '^tem_peer_up{peer="3",name="v3"} 0$' "$dir/m.txt" && break
  sleep 0.2
done
grep -q '^tem_peer_up{peer="3",name="v3"} 0$' "$dir/m.txt" || fail "stopped v3 still up: $(grep tem_peer_up "$dir/m.txt")"
ok "a stopped validator's tem_peer_up goes to 0"

# Every metric the rules and the dashboard use must exist (node_* come from node_exporter).
/usr/bin/python3 - "$dir/m.txt" deploy/prometheus/alerts.yml deploy/grafana/tem-ledger.json <<'PY' || fail "a rule or panel queries a series temd does not export"
import json, re, sys
have = set()
for line in open(sys.argv[1]):
    if line and not line.startswith("#"):
        name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
        have.add(re.sub(r"_(bucket|sum|count)$", "", name) if "_seconds_" in name else name)
        have.add(name)
exprs = re.findall(r"expr: (.*)", open(sys.argv[2]).read())
exprs += [t["expr"] for p in json.load(open(sys.argv[3]))["panels"] for t in p["targets"]]
missing = set()
for e in exprs:
    for m in re.findall(r"\b((?:tem|process)_[a-zA-Z0-9_]+)", e):
        if m not in have:
            missing.add(m)
if missing:
    print("missing:", sorted(missing)); sys.exit(1)
print(f"{len(exprs)} expressions, every tem_/process_ series exported")
PY
ok "alert rules and dashboard query only exported series"
echo "t_metrics: $passed passed, 0 failed"
