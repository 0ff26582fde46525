#!/usr/bin/env bash
# The PostgreSQL indexer (issue #16 item 7, docs/indexer.md) against a real PostgreSQL server this
# script starts itself (Debian's postgresql-15: initdb in a temp folder, run as `nobody`, unix
# socket in the temp folder, a free port below 32768) and a 4-validator cluster whose validator 0
# indexes into it. A feeder with one weak line is installed so the grid check curtails trades.
#   1. transfers stream while postgres is killed with -9 (the indexer lags and retries), postgres
#      restarts, and temd is killed with -9 while it catches up, then restarts;
#   2. orders that trade (some curtailed by the weak line), meter readings, settlement, and one
#      more kill -9 of temd and of postgres in between;
#   3. checks: the indexed height reaches the node's; every height 1..H appears exactly once with
#      the node's block hash and tx count (GET /v1/blocks/{h}); every tx exactly once at its
#      height and position with the node's receipt code (GET /v1/tx/{id}); trades match
#      GET /v1/trades; the latest balance row of every account equals GET /v1/accounts; the
#      monthly-bill query equals the prosumers' money change; the congested-slots query equals the
#      curtailments in the receipts.
# Every process is started here, tracked by pid and killed on exit; every wait is bounded.
set -euo pipefail
B=${BUILD:-build}
T="$B/temctl"
D="$B/temd"
PGB=/usr/lib/postgresql/15/bin
command -v curl >/dev/null && command -v jq >/dev/null || { echo "t_indexer: FAIL: curl or jq missing (make deps installs it)"; exit 1; }
[ -x "$PGB/initdb" ] && command -v psql >/dev/null || { echo "t_indexer: FAIL: postgresql-15 missing (make deps installs it)"; exit 1; }
dir=$(mktemp -d /tmp/tem-indexer-XXXXXX)
chmod 755 "$dir"
declare -A PID=()
PGPID=
passed=0
cleanup() {
  for k in "${!PID[@]}"; do kill -TERM "${PID[$k]}" 2>/dev/null || true; done
  [ -n "$PGPID" ] && kill -INT "$PGPID" 2>/dev/null || true
  for _ in $(seq 1 50); do
    alive=0
    for k in "${!PID[@]}"; do kill -0 "${PID[$k]}" 2>/dev/null && alive=1; done
    [ -n "$PGPID" ] && kill -0 "$PGPID" 2>/dev/null && alive=1
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for k in "${!PID[@]}"; do kill -KILL "${PID[$k]}" 2>/dev/null || true; done
  [ -n "$PGPID" ] && kill -KILL "$PGPID" 2>/dev/null || true
  if [ "${KEEP:-}" = 1 ]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for f in "$dir"/*.log; do echo "--- $f"; tail -n 25 "$f"; done
  exit 1
}
ok() { passed=$((passed+1)); echo "ok - $* [${SECONDS}s]"; }

base=$((13000 + ($$ % 300) * 20))
peer() { echo "127.0.0.1:$((base + $1))"; }
http() { echo "127.0.0.1:$((base + 10 + $1))"; }
PGPORT=$((base + 19))

# ---- PostgreSQL as a non-root user (nobody when we are root, else ourselves)
mkdir -p "$dir/pg" "$dir/sock"
if [ "$(id -u)" = 0 ]; then
  chown nobody "$dir/pg" "$dir/sock"
  AS=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
else
  AS=()
fi
"${AS[@]}" "$PGB/initdb" -D "$dir/pg" -U tem --auth=trust -E UTF8 --no-locale >"$dir/initdb.out" 2>&1 || { cat "$dir/initdb.out"; fail "initdb"; }
URL="postgresql:///postgres?host=$dir/sock&port=$PGPORT&user=tem"
q() { psql -X -A -t -q -v ON_ERROR_STOP=1 "$URL" "$@"; }
pg_start() {
  local end=$((SECONDS + 30))
  while [ $SECONDS -lt $end ]; do
    # setpriv execs postgres, so $! is the postmaster itself
    "${AS[@]}" "$PGB/postgres" -D "$dir/pg" -k "$dir/sock" -p "$PGPORT" -c listen_addresses= -c fsync=on >>"$dir/postgres.log" 2>&1 &
    PGPID=$!
    for _ in $(seq 1 50); do
      q -c 'select 1' >/dev/null 2>&1 && return 0
      kill -0 "$PGPID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$PGPID" 2>/dev/null || true
    wait "$PGPID" 2>/dev/null || true
    sleep 0.5 # backends of a killed postmaster still hold its shared memory for a moment
  done
  return 1
}
pg_kill() {
  kill -KILL "$PGPID"
  wait "$PGPID" 2>/dev/null || true
  PGPID=
}
pg_start || fail "postgres did not start"
ok "postgres started as $([ ${#AS[@]} = 0 ] && id -un || echo nobody) on port $PGPORT"

# ---- chain: 4 validators, a 3-bus feeder whose line 2-3 is weak
for i in 0 1 2 3; do "$T" keygen --type validator --out "$dir/v$i.key" >/dev/null; done
for k in admin util dso p1 p2 p3 p4 p5 p6 t1 t2 m1 m2 m3 m4 m5 m6; do "$T" keygen --type meter --out "$dir/$k.key" >/dev/null; done
pub() { jq -r .public "$dir/$1.key"; }
args=()
for i in 0 1 2 3; do args+=(--validator "v$i:$dir/v$i.key:$(peer $i)@$(http $i)"); done
MONEY=100000000000
for kb in p1:3 p2:2 p3:3 p4:2 p5:2 p6:2 t1:2 t2:2; do args+=(--participant "$dir/${kb%%:*}.key:${kb##*:}:prosumer:$MONEY"); done
# each prosumer's meter (a separate key: meters sign readings, trading keys never do)
for i in 1 2 3 4 5 6; do args+=(--meter "$dir/m$i.key:$dir/p$i.key:$([ $i = 1 ] || [ $i = 3 ] && echo 3 || echo 2):1000000:1000000"); done
SLOT_MS=6000
GEN_MS=$(( $(date +%s) * 1000 ))
"$T" genesis --chain-id tem-ix --time-ms "$GEN_MS" "${args[@]}" --admin "$dir/admin.key" \
  --participant "$dir/util.key:1:utility:$MONEY" --participant "$dir/dso.key:1:dso:0" \
  --tariff 0:300000:80000 --slot-ms $SLOT_MS --gate-closure-ms 1000 --settlement-deadline-ms 10000 \
  --seller-collateral-ppm 0 --out "$dir/g.json" 2>/dev/null
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

start() { # start NAME extra-args...
  local name=$1; shift
  "$D" --data-dir "$dir/$name" --genesis "$dir/g.json" "$@" --log-level info 2>>"$dir/$name.log" &
  PID[$name]=$!
}
start_n0() { start n0 --key "$dir/v0.key" --indexer-postgres-url "$URL" --indexer-poll-ms 50 --indexer-retry-max-ms 500; }
start_n0
for i in 1 2 3; do start "n$i" --key "$dir/v$i.key"; done

j() { jq -r "$1"; }
status() { curl -s -m 2 "http://$(http "$1")/v1/status"; }
height() { status "$1" | j .height 2>/dev/null || echo 0; }
wait_height() { # node min timeout_s
  local end=$((SECONDS + $3))
  while [ $SECONDS -lt $end ]; do [ "$(height "$1")" -ge "$2" ] && return 0; sleep 0.2; done
  return 1
}
indexed() { q -c 'select height from tem_indexer' 2>/dev/null || echo -1; }
wait_indexed() { # min timeout_s
  local end=$((SECONDS + $2))
  while [ $SECONDS -lt $end ]; do [ "$(indexed)" -ge "$1" ] && return 0; sleep 0.2; done
  return 1
}
for i in 0 1 2 3; do wait_height $i 2 30 || fail "node $i did not commit 2 blocks"; done
wait_indexed 1 20 || fail "indexer did not index block 1"
ok "4 validators commit; validator 0 indexes (height $(indexed))"

N1="http://$(http 1)"
"$T" feeder install "$dir/feeder" --key "$dir/admin.key" --chain-id tem-ix --nonce 0 --out "$dir/feeder.bin" >/dev/null
"$T" submit --node "$N1" --file "$dir/feeder.bin" --wait >/dev/null || fail "feeder install refused"

# ---- 1. transfers, kill -9 postgres, restart, kill -9 temd while it catches up, restart
t2pub=$(pub t2)
submitted=()
nonce=0
transfer() { # node
  local id
  id=$("$T" submit --node "http://$(http "$1")" --key "$dir/t1.key" --nonce $nonce transfer --to "$t2pub" --amount $((1000 + nonce))) \
    || fail "transfer $nonce refused"
  submitted+=("$id"); nonce=$((nonce + 1))
}
for _ in $(seq 1 8); do transfer 1; sleep 0.1; done
at_pgkill=$(indexed)
pg_kill
for _ in $(seq 1 8); do transfer 2; sleep 0.15; done
h_down=$(height 1)
wait_height 0 $((h_down + 4)) 20 || fail "node 0 stopped committing while postgres was down"
ok "postgres killed -9: the cluster, validator 0 included, kept committing (height $(height 0))"
h_pgup=$(height 0)
pg_start || fail "postgres did not restart"
sleep 0.$((RANDOM % 6))
kill -KILL "${PID[n0]}"; wait "${PID[n0]}" 2>/dev/null || true; unset "PID[n0]"
at_kill=$(indexed)
for _ in $(seq 1 8); do transfer 3; sleep 0.1; done
start_n0
# the restarted indexer replays, then writes the backlog block after block: kill postgres in it
for _ in $(seq 1 100); do [ "$(indexed)" -gt "$at_kill" ] && break; sleep 0.02; done
at_pgkill2=$(indexed)
pg_kill
h_pgkill2=$(height 1)
sleep 1
pg_start || fail "postgres did not restart"
H=$(height 1)
wait_height 0 "$H" 40 || fail "restarted node 0 did not catch up"
wait_indexed "$H" 60 || fail "indexer did not catch up to $H (at $(indexed))"
ok "postgres killed -9 with the index at $at_pgkill, node at $h_pgup when it came back; temd killed -9 at indexed height $at_kill; restarted, postgres killed -9 again during its catch-up at $at_pgkill2 (node at $h_pgkill2); the index reached $H"

# ---- 1b. kill -9 postgres while the indexer's block transaction is half written: a session
# holds a lock on balance_changes, so the indexer's next transaction stops at that table after
# writing its block and tx rows, and postgres dies under it.
echo "BEGIN; LOCK TABLE balance_changes IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120);" | psql -X -q "$URL" >/dev/null 2>&1 &
PID[locker]=$!
for _ in $(seq 1 100); do [ "$(q -c "select count(*) from pg_locks l join pg_class c on c.oid = l.relation where c.relname = 'balance_changes' and l.mode = 'AccessExclusiveLock' and l.granted")" = 1 ] && break; sleep 0.05; done
# a burst of 60 transfers from t2 in one POST /v1/txs: a few big blocks for the indexer to write
t1pub=$(pub t1)
hexes=()
for n in $(seq 0 59); do
  "$T" tx sign --key "$dir/t2.key" --genesis "$dir/g.json" --nonce "$n" --out "$dir/b.tx" transfer --to "$t1pub" --amount $((n + 1)) >/dev/null
  hexes+=("\"$(od -An -v -tx1 "$dir/b.tx" | tr -d ' \n')\"")
done
(IFS=,; echo "[${hexes[*]}]") >"$dir/burst.json"
curl -s -X POST -H 'Content-Type: application/json' --data-binary @"$dir/burst.json" "$N1/v1/txs" >"$dir/burst.out"
mapfile -t burst < <(jq -r '.[] | select(.error == null) | .txid' "$dir/burst.out")
[ ${#burst[@]} = 60 ] || fail "burst: $(head -c 300 "$dir/burst.out")"
submitted+=("${burst[@]}")
waiting=0
for _ in $(seq 1 200); do
  waiting=$(q -c "select count(*) from pg_stat_activity where application_name = 'temd-indexer' and wait_event_type = 'Lock' and state = 'active'")
  [ "$waiting" = 1 ] && break
  sleep 0.1
done
[ "$waiting" = 1 ] || fail "the indexer never waited on the locked table"
at_mid=$(indexed)
pg_kill
kill -KILL "${PID[locker]}" 2>/dev/null || true; wait "${PID[locker]}" 2>/dev/null || true; unset "PID[locker]"
pg_start || fail "postgres did not restart"
H=$(height 0)
wait_indexed "$H" 60 || fail "indexer did not catch up to $H after the mid-transaction kill (at $(indexed))"
caught=$(grep 'indexer: caught up: blocks' "$dir/n0.log" | tail -1 | sed 's/.*caught up: //')
ok "60 transfers in one burst; postgres killed -9 inside the indexer's transaction for block $((at_mid + 1)); after restart the index reached $H (last backlog: $caught)"

# ---- 2. market: orders that trade and get curtailed, readings, settlement
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
cur=$(( ($(now_ms) - GEN_MS) / SLOT_MS ))
S=$((cur + 3))
G="--genesis $dir/g.json"
order() { # key node side price qty
  "$T" submit --node "http://$(http "$2")" --key "$dir/$1.key" order --slot $S --side "$3" --price "$4" --qty "$5" \
    || fail "order by $1 refused"
}
orders=()
orders+=("$(order p1 1 sell 100000 100)")
orders+=("$(order p3 2 sell 90000 50)")
sleep 0.6
orders+=("$(order p2 3 buy 120000 100)")
orders+=("$(order p4 1 buy 150000 50)")
orders+=("$(order p5 2 sell 95000 30)")
sleep 0.6
orders+=("$(order p6 3 buy 100000 30)")
wait_committed() { # txid timeout
  local end=$((SECONDS + $2)) s
  while [ $SECONDS -lt $end ]; do
    s=$(curl -s -m 2 "http://$(http 1)/v1/tx/$1" | j .status 2>/dev/null || true)
    case "$s" in committed|refused) echo "$s"; return 0;; esac
    sleep 0.2
  done
  return 1
}
for id in "${orders[@]}"; do
  s=$(wait_committed "$id" 20) || fail "order $id not committed"
  [ "$s" = committed ] || fail "order $id refused: $(curl -s "http://$(http 1)/v1/tx/$id")"
done
kill -KILL "${PID[n0]}"; wait "${PID[n0]}" 2>/dev/null || true; unset "PID[n0]"
start_n0
ntr=$(curl -s "http://$(http 1)/v1/trades?slot=$S" | jq '[.trades[] | select(.quantity_wh > 0)] | length')
[ "$ntr" -ge 2 ] || fail "expected trades in slot $S, got $ntr: $(curl -s "http://$(http 1)/v1/trades?slot=$S")"
ok "6 orders for slot $S committed, $ntr trades; temd killed -9 and restarted"
end_ms=$(( GEN_MS + (S + 1) * SLOT_MS ))
while [ "$(now_ms)" -lt $((end_ms + 200)) ]; do sleep 0.1; done
reading() { "$T" submit --node "$N1" --key "$dir/m${1#p}.key" reading --slot $S --import "$2" --export "$3" || fail "reading by $1 refused"; }
readings=("$(reading p1 0 100)" "$(reading p2 50 0)" "$(reading p3 0 50)" "$(reading p4 10 0)" "$(reading p5 0 30)" "$(reading p6 30 0)")
for id in "${readings[@]}"; do
  s=$(wait_committed "$id" 20) || fail "reading $id not committed"
  [ "$s" = committed ] || fail "reading $id refused: $(curl -s "http://$(http 1)/v1/tx/$id")"
done
pg_kill
deadline_ms=$((end_ms + 10000))
while [ "$(now_ms)" -lt $((deadline_ms + 1500)) ]; do sleep 0.1; done
pg_start || fail "postgres did not restart"
H=$(height 0)
wait_indexed "$H" 60 || fail "indexer did not catch up to $H after the second postgres kill"
ok "readings committed; postgres killed -9 across the settlement of slot $S; index caught up to $H"

# ---- 3. the index against the node's API
N0="http://$(http 0)"
H=$(indexed)
read -r cnt dist lo hi <<<"$(q -F ' ' -c 'select count(*), count(distinct height), min(height), max(height) from blocks where height <= '"$H")"
[ "$cnt" = "$H" ] && [ "$dist" = "$H" ] && [ "$lo" = 1 ] && [ "$hi" = "$H" ] || fail "blocks: count $cnt distinct $dist min $lo max $hi, indexed height $H"
q -F ' ' -c 'select height, encode(hash,'"'hex'"'), n_txs from blocks where height <= '"$H"' order by height' >"$dir/sql_blocks"
q -F ' ' -c 'select height, pos, encode(txid,'"'hex'"'), code from txs where height <= '"$H"' order by height, pos' >"$dir/sql_txs"
# one curl for every block (one connection, kept alive)
for h in $(seq 1 "$H"); do printf 'url = "%s/v1/blocks/%s"\n' "$N0" "$h"; done | curl -s -K - >"$dir/blocks.json"
jq -r '"\(.height) \(.hash) \(.txids | length)"' "$dir/blocks.json" >"$dir/api_blocks"
jq -r '.height as $h | .txids | to_entries[] | "\($h) \(.key) \(.value)"' "$dir/blocks.json" >"$dir/api_txs"
[ "$(wc -l <"$dir/api_blocks")" = "$H" ] || fail "the API answered $(wc -l <"$dir/api_blocks") of $H blocks"
diff "$dir/api_blocks" "$dir/sql_blocks" >/dev/null || fail "blocks differ: $(diff "$dir/api_blocks" "$dir/sql_blocks" | head -5)"
cut -d' ' -f1-3 "$dir/sql_txs" | diff "$dir/api_txs" - >/dev/null || fail "txs differ: $(cut -d' ' -f1-3 "$dir/sql_txs" | diff "$dir/api_txs" - | head -5)"
ntx=$(wc -l <"$dir/sql_txs")
[ "$(q -c "select count(distinct txid) from txs where height <= $H")" = "$ntx" ] || fail "a txid appears twice"
all_ids=("${submitted[@]}" "${orders[@]}" "${readings[@]}")
for id in "${all_ids[@]}"; do printf 'url = "%s/v1/tx/%s"\n' "$N0" "$id"; done | curl -s -K - |
  jq -r '"\(.txid) \(.receipt.code)"' | sort >"$dir/api_codes"
awk '{print $3, $4}' "$dir/sql_txs" | sort >"$dir/sql_codes"
join "$dir/api_codes" "$dir/sql_codes" >"$dir/joined"
[ "$(wc -l <"$dir/api_codes")" = ${#all_ids[@]} ] || fail "the API answered $(wc -l <"$dir/api_codes") of ${#all_ids[@]} txs"
[ "$(wc -l <"$dir/joined")" = ${#all_ids[@]} ] || fail "$(( ${#all_ids[@]} - $(wc -l <"$dir/joined") )) submitted txs missing from the index"
[ -z "$(awk '$2 != $3' "$dir/joined")" ] || fail "receipt codes differ: $(awk '$2 != $3' "$dir/joined" | head -3)"
ok "blocks 1..$H each exactly once with the node's hash and tx count; $ntx txs each exactly once at the node's height and position; ${#submitted[@]} transfers, 6 orders, 6 readings with the node's receipt codes"

api_tr=$(curl -s "$N0/v1/trades?slot=$S" | jq -r '.trades[] | select(.quantity_wh > 0) | "\(.seq) \(.seller) \(.buyer) \(.quantity_wh) \(.price) \(.value_uunit)"')
sql_tr=$(q -F ' ' -c "select seq, encode(seller,'hex'), encode(buyer,'hex'), quantity_wh, price, value_uunit from trades where slot = $S order by seq")
[ "$api_tr" = "$sql_tr" ] || fail "trades of slot $S differ: API [$api_tr] index [$sql_tr]"
[ "$(q -c "select count(*) from trades where slot = $S and taker_txid is not null and maker_txid is not null")" = "$ntr" ] || fail "trades without taker/maker"
[ "$(q -c "select count(*) from fills f join txs t using (txid) where f.quantity_wh > 0")" = "$ntr" ] || fail "fills with quantity do not match trades"
ok "$ntr trades of slot $S equal GET /v1/trades (seller, buyer, Wh, price, value), each linked to its taker and maker"

# Balances move every slot (silent meters are estimated), so compare at one height: the API's
# answer between two equal status heights, the index's latest row at or below that height.
at_height() { # pubkey -> "height money escrow tokens escrow_tokens debt"
  local h1 h2 a
  for _ in $(seq 1 50); do
    # status, account, status on one connection, back to back
    read -r h1 a h2 <<<"$(curl -s "$N0/v1/status" "$N0/v1/accounts/$1" "$N0/v1/status" |
      jq -rs '"\(.[0].height) \(.[1].money_uunit)_\(.[1].escrow_uunit)_\(.[1].tokens_wh)_\(.[1].escrow_tokens_wh)_\(.[1].debt_uunit) \(.[2].height)"')"
    [ -n "$h1" ] && [ "$h1" = "$h2" ] && { wait_indexed "$h1" 30 || return 1; echo "$h1 ${a//_/ }"; return 0; }
  done
  return 1
}
for k in p1 p2 p3 p4 p5 p6 t1 t2 util dso; do
  r=$(at_height "$(pub $k)") || fail "no stable height for $k"
  read -r hk a <<<"$r"
  b=$(q -F ' ' -c "select money_uunit, money_escrow_uunit, tokens_wh, tokens_escrow_wh, debt_uunit from balance_changes where account = decode('$(pub $k)','hex') and height <= $hk order by height desc limit 1")
  [ "$a" = "$b" ] || fail "balance of $k at height $hk: API [$a] index [$b]"
  s=$(q -c "select sum(d_money_uunit) from balance_changes where account = decode('$(pub $k)','hex') and height <= $hk")
  [ "$s" = "${a%% *}" ] || fail "balance changes of $k sum to $s, not ${a%% *}"
done
ok "latest balance row of 10 accounts equals GET /v1/accounts at the same height; their money deltas sum to the balance"

# The example queries of docs/indexer.md, as written there.
bill() { # pubkey height
  q -F ' ' -v acct="$1" -v h="$2" <<'SQL'
SELECT to_char(date_trunc('month', slot_start), 'YYYY-MM') AS month,
       count(*) AS slots,
       sum(import_wh) AS import_wh, sum(export_wh) AS export_wh,
       sum(trade_net_uunit) AS trades_uunit, sum(penalty_net_uunit) AS penalties_uunit,
       sum(utility_net_uunit) AS utility_uunit, sum(fees_uunit) AS fees_uunit,
       sum(total_uunit - fees_uunit) AS net_uunit,
       sum(unpaid_uunit) AS unpaid_uunit
FROM settlements
WHERE account = decode(:'acct', 'hex') AND height <= :h
GROUP BY 1 ORDER BY 1;
SQL
}
for k in p1 p2 p3; do
  r=$(at_height "$(pub $k)") || fail "no stable height for $k"
  read -r hk money _ <<<"$r"
  out=$(bill "$(pub $k)" "$hk")
  [ "$(wc -l <<<"$out")" = 1 ] || fail "bill of $k: $out"
  net=$(cut -d' ' -f9 <<<"$out")
  [ "$net" = $((money - MONEY)) ] || fail "bill of $k says net $net, the account moved $((money - MONEY))"
  echo "  bill $k: $out"
done
ok "monthly bill of p1, p2, p3 equals each one's money change on the chain"

api_c=$(for id in "${orders[@]}"; do curl -s "$N0/v1/tx/$id" | jq -r '.receipt.fills[]? | select(.curtailed_wh > 0) | "\(.binding) \(.curtailed_wh)"'; done | sort)
[ -n "$api_c" ] || fail "no fill was curtailed: the feeder did not congest"
line=$(head -1 <<<"$api_c" | cut -d' ' -f1-2)
exp_n=$(grep -c "^$line " <<<"$api_c")
exp_wh=$(grep "^$line " <<<"$api_c" | awk '{s+=$3} END {print s}')
congested() { # binding
  q -F ' ' -v line="$1" <<'SQL'
SELECT slot, count(*) AS curtailed_matches, sum(curtailed_wh) AS curtailed_wh,
       sum(allowed_wh) AS allowed_wh
FROM curtailments
WHERE binding = :'line'
GROUP BY slot ORDER BY slot;
SQL
}
out=$(congested "$line")
[ "$out" = "$S $exp_n $exp_wh $(q -c "select sum(allowed_wh) from curtailments where binding = '$line'")" ] || fail "congested slots of $line: [$out], receipts say slot $S $exp_n matches $exp_wh Wh"
echo "  congested $line: $out"
ok "congested slots of $line: slot $S, $exp_n curtailed matches, $exp_wh Wh, as the receipts say"

[ "$(q -c "select count(*) from settlements where slot = $S and estimated = 0")" -ge 6 ] || fail "settlement lines of slot $S missing"
[ "$(q -c "select count(distinct height) from settlements where slot = $S")" = 1 ] || fail "slot $S settled in two blocks"
for f in "$dir"/n0.log; do grep -q 'ERROR.*indexer' "$f" && fail "indexer logged an error"; done
ok "settlement lines of slot $S written once, in one block; no indexer error logged"

# ---- 4. a database whose last block is not the node's (a fork, a mixed-up restore) is refused
kill -TERM "${PID[n0]}"; wait "${PID[n0]}" 2>/dev/null || true; unset "PID[n0]"
L=$(indexed)
q -c "update blocks set hash = '\\x$(printf '%064d' 0)'::bytea where height = $L"
start_n0
end=$((SECONDS + 30))
until grep -q "database's block $L is not this node's" "$dir/n0.log" || [ $SECONDS -ge $end ]; do sleep 0.2; done
grep -q "database's block $L is not this node's" "$dir/n0.log" || fail "the indexer did not refuse a database with a foreign block $L"
wait_height 0 $((L + 3)) 30 || fail "node 0 did not commit with a refused database"
[ "$(indexed)" = "$L" ] || fail "the indexer wrote past a foreign block: height $(indexed)"
ok "a database whose block $L differs from the node's is refused (nothing written) while the node commits on"
echo "t_indexer: $passed passed, 0 failed"
