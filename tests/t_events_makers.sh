#!/usr/bin/env bash
# /v1/events names a fill's maker from the trade record the fill wrote, not by reading the
# maker's stored block on the loop thread (docs/api.md, "Events"). The attack this closes: a
# participant rests orders in many distinct blocks, then fills them all from a second key in one
# block; a node whose cache of recent signers does not hold them (a restart, or enough traffic
# since) read and decoded one stored block per maker, up to 4096 for that one block.
#   1. p1 rests K sell orders, one a block; validator 0 restarts (its signer cache is empty);
#   2. a subscriber follows node 0's trade events for p1's account; p2's one buy order fills all K
#      in one block: K trade events reach it, each naming p1 as seller and p2 as buyer and the
#      price and quantity /v1/trades lists, and node 0 read no stored block for them
#      (tem_events_maker_block_reads_total 0; with the store lookup it reads K);
#   3. a replay of that block (from_height) still names p1, from the store (the state has moved
#      on, so the trade records are not used for replays);
#   4. that store fallback stops at events_maker_read_bytes_max: set to 1 byte, a replay reads one
#      block and names one maker, the other K-1 trade events carry a null seller.
# Every process is started here, tracked by pid and killed on exit; every wait is bounded.
set -euo pipefail
B=${BUILD:-build}
T="$B/temctl"
D="$B/temd"
for c in curl jq; do command -v $c >/dev/null || { echo "t_events_makers: FAIL: $c missing (make deps installs it)"; exit 1; }; done
dir=$(mktemp -d /tmp/tem-em-XXXXXX)
. "$(dirname "$0")/lib_proc.sh"

base=$((17000 + ($$ % 400) * 20))
peer() { echo "127.0.0.1:$((base + $1))"; }
http() { echo "127.0.0.1:$((base + 10 + $1))"; }
for i in 0 1 2 3; do "$T" keygen --type validator --out "$dir/v$i.key" >/dev/null; done
for k in admin p1 p2; do "$T" keygen --type meter --out "$dir/$k.key" >/dev/null; done
P1=$(jq -r .public "$dir/p1.key")
P2=$(jq -r .public "$dir/p2.key")
args=()
for i in 0 1 2 3; do args+=(--validator "v$i:$dir/v$i.key:$(peer $i)@$(http $i)"); done
"$T" genesis --chain-id tem-em --time-ms $(( $(date +%s) * 1000 )) "${args[@]}" --admin "$dir/admin.key" \
  --participant "$dir/p1.key:1:prosumer:100000000000" --participant "$dir/p2.key:1:prosumer:100000000000" \
  --tariff 0:300000:80000 --slot-ms 60000 --seller-collateral-ppm 0 --out "$dir/g.json" 2>/dev/null || fail "genesis"
start_validators n "$dir"
N="http://$(http 0)"
N1="http://$(http 1)"
wait_blocks "$N" 2 "the chain"
metric() { curl -s -m 2 "$N/metrics" | awk -v k="$1" '$1 == k {print $2}'; }

# ---- 1. K resting sell orders, each in a block of its own
K=6
slot=$(( $(curl -s "$N1/v1/status" | jq .clock.next_open_slot) + 1 ))
for k in $(seq 1 $K); do
  "$T" submit --node "$N1" --key "$dir/p1.key" --wait --json order --slot "$slot" --side sell \
    --price $((100000 + k)) --qty 100 >"$dir/sub.out" 2>&1 || fail "sell $k: $(cat "$dir/sub.out")"
  jq -r .height "$dir/sub.out" >>"$dir/heights"
done
[ "$(sort -u "$dir/heights" | wc -l)" = $K ] || fail "the sells are not in $K blocks: $(tr '\n' ' ' <"$dir/heights")"
kill -TERM "${PID[n0]}"
wait "${PID[n0]}" 2>/dev/null || true
"$D" --data-dir "$dir/n0" --genesis "$dir/g.json" --key "$dir/v0.key" --log-level info 2>>"$dir/n0.log" &
PID[n0]=$!
wait_blocks "$N" "$(tail -1 "$dir/heights")" "validator 0 after its restart"
[ "$(metric tem_events_maker_block_reads_total)" = 0 ] || fail "maker reads before any event: $(metric tem_events_maker_block_reads_total)"
ok "$K sells rest in $K blocks; validator 0 restarted"

# ---- 2. one buy fills them all, live
curl -sN -m 60 "$N/v1/events?kinds=trade&account=$P1" >"$dir/live.sse" 2>/dev/null &
PID[live]=$!
for _ in $(seq 1 50); do grep -q '^: tem events' "$dir/live.sse" 2>/dev/null && break; sleep 0.1; done
grep -q '^: tem events' "$dir/live.sse" || fail "no event stream from validator 0"
"$T" submit --node "$N" --key "$dir/p2.key" --wait --json order --slot "$slot" --side buy --price 200000 \
  --qty $((100 * K)) >"$dir/buy.out" 2>&1 || fail "buy: $(cat "$dir/buy.out")"
H=$(jq -r .height "$dir/buy.out")
trades() { { grep '^data: ' "$1" || true; } | sed 's/^data: //' | jq -s "[.[] | select(.height == $H and .source == \"fill\")]"; }
for _ in $(seq 1 100); do [ "$(trades "$dir/live.sse" | jq length)" -ge $K ] && break; sleep 0.1; done
trades "$dir/live.sse" >"$dir/live.json"
[ "$(jq length "$dir/live.json")" = $K ] || fail "want $K trade events for p1 at height $H: $(cat "$dir/live.json")"
jq -e --arg s "$P1" --arg b "$P2" 'all(.seller == $s and .buyer == $b and .quantity_wh == 100)' "$dir/live.json" >/dev/null ||
  fail "a trade event does not name p1 as the maker: $(cat "$dir/live.json")"
curl -s "$N/v1/trades?slot=$slot" >"$dir/trades.json"
[ "$(jq -c '[.trades[] | [.price, .quantity_wh]] | sort' "$dir/trades.json")" = "$(jq -c '[.[] | [.price, .quantity_wh]] | sort' "$dir/live.json")" ] ||
  fail "events and /v1/trades differ: $(cat "$dir/trades.json") against $(cat "$dir/live.json")"
reads=$(metric tem_events_maker_block_reads_total)
[ "$reads" = 0 ] || fail "validator 0 read $reads stored blocks to name the makers"
ok "$K trade events name p1 as the seller, agree with /v1/trades, and no stored block was read"

# ---- 3. a replay of that block names the maker from the store
curl -sN -m 5 "$N/v1/events?kinds=trade&account=$P1&from_height=$H" >"$dir/replay.sse" 2>/dev/null || true
trades "$dir/replay.sse" >"$dir/replay.json"
[ "$(jq length "$dir/replay.json")" = $K ] && jq -e --arg s "$P1" 'all(.seller == $s)' "$dir/replay.json" >/dev/null ||
  fail "replay: $(cat "$dir/replay.json")"
reads=$(metric tem_events_maker_block_reads_total)
[ "$reads" -ge 1 ] && [ "$reads" -le $K ] || fail "replay read $reads stored blocks, want 1..$K"
ok "a replay of height $H names p1 too, reading $reads stored blocks"

# ---- 4. the store's budget: with room for one block, one maker is named and the rest are null
kill -TERM "${PID[n0]}"
wait "${PID[n0]}" 2>/dev/null || true
"$D" --data-dir "$dir/n0" --genesis "$dir/g.json" --key "$dir/v0.key" --log-level info \
  --events-maker-read-bytes-max 1 2>>"$dir/n0.log" &
PID[n0]=$!
wait_blocks "$N" "$H" "validator 0 after its second restart"
curl -sN -m 5 "$N/v1/events?kinds=trade&from_height=$H" >"$dir/budget.sse" 2>/dev/null || true
trades "$dir/budget.sse" >"$dir/budget.json"
[ "$(jq length "$dir/budget.json")" = $K ] || fail "budget replay: want $K trade events: $(cat "$dir/budget.json")"
named=$(jq --arg s "$P1" '[.[] | select(.seller == $s)] | length' "$dir/budget.json")
unnamed=$(jq '[.[] | select(.seller == null)] | length' "$dir/budget.json")
reads=$(metric tem_events_maker_block_reads_total)
[ "$named" = 1 ] && [ "$unnamed" = $((K - 1)) ] && [ "$reads" = 1 ] ||
  fail "budget of 1 byte: $named named, $unnamed null, $reads blocks read; want 1, $((K - 1)), 1"
ok "with events_maker_read_bytes_max 1 a replay reads one stored block: 1 maker named, $unnamed null"
echo "t_events_makers: $passed checks passed"
