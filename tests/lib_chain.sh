# lib_chain.sh: sourced by tests that need a live local chain (t_pyclient.sh, t_openapi.sh):
# 4 validators on 127.0.0.1, an admin, a utility and participants p1..p3 with meters m1..m3
# (readings are signed by meter keys, 2 MW each way); 10 s slots whose
# readings are due 5 s after the slot ends (so a test sees a slot settle within 15 s), genesis
# time two slots in the past; gate closure stays 5 minutes (orders go 30 slots ahead). Every process is
# started here, tracked by pid, killed on exit; every wait is bounded. Needs $B (build dir).
T="$B/temctl"
D="$B/temd"
dir=$(mktemp -d /tmp/tem-chain-XXXXXX)
. "$(dirname "${BASH_SOURCE[0]}")/lib_proc.sh"
# Ports 30000..31999 (other scripted tests use lower ones); skip a block where any port answers.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
base=$((30000 + ($$ % 100) * 20))
for _ in $(seq 1 100); do
  busy=0
  for o in 0 1 2 3 10 11 12 13; do port_busy $((base + o)) && busy=1 && break; done
  [ $busy = 0 ] && break
  base=$((30000 + (base - 30000 + 20) % 2000))
done
http() { echo "127.0.0.1:$((base + 10 + $1))"; }
chain_start() {
  local args=() i
  for i in 0 1 2 3; do "$T" keygen --type validator --out "$dir/v$i.key" >/dev/null; done
  for k in admin util p1 p2 p3 m1 m2 m3; do "$T" keygen --type meter --out "$dir/$k.key" >/dev/null; done
  for i in 0 1 2 3; do args+=(--validator "v$i:$dir/v$i.key:127.0.0.1:$((base + i))@$(http $i)"); done
  "$T" genesis --chain-id tem-chain --time-ms $(( ($(date +%s) - 20) * 1000 )) "${args[@]}" --admin "$dir/admin.key" \
    --participant "$dir/util.key:1:utility:0" --participant "$dir/p1.key:2:prosumer:100000000000" \
    --participant "$dir/p2.key:3:prosumer:100000000000" --participant "$dir/p3.key:4:consumer:100000000000" \
    --meter "$dir/m1.key:$dir/p1.key:2:2000000:2000000" --meter "$dir/m2.key:$dir/p2.key:3:2000000:2000000" \
    --meter "$dir/m3.key:$dir/p3.key:4:2000000:2000000" \
    --tariff 0:300000:80000 --slot-ms 10000 --settlement-deadline-ms 5000 --out "$dir/g.json" 2>/dev/null || fail "genesis"
  # CHAIN_GENESIS_JQ: a jq filter applied to the genesis; CHAIN_TEMD_ARGS: extra temd flags;
  # CHAIN_START_HEIGHT: the height every node must reach before chain_start returns (2).
  if [ -n "${CHAIN_GENESIS_JQ:-}" ]; then
    jq "$CHAIN_GENESIS_JQ" "$dir/g.json" >"$dir/g2.json" && mv "$dir/g2.json" "$dir/g.json" || fail "genesis filter"
  fi
  for i in 0 1 2 3; do
    # shellcheck disable=SC2086
    "$D" --data-dir "$dir/n$i" --genesis "$dir/g.json" --key "$dir/v$i.key" --log-level info ${CHAIN_TEMD_ARGS:-} 2>>"$dir/n$i.log" &
    PID[n$i]=$!
  done
  local end=$((SECONDS + 30))
  for i in 0 1 2 3; do
    until [ "$(curl -s -m 2 "http://$(http $i)/v1/status" | jq -r .height 2>/dev/null || echo -1)" -ge "${CHAIN_START_HEIGHT:-2}" ] 2>/dev/null; do
      [ $SECONDS -lt $end ] || fail "node $i did not reach height ${CHAIN_START_HEIGHT:-2}"
      sleep 0.2
    done
  done
}
