#!/usr/bin/env bash
# State sync across processes (issue #15; docs/operate.md "Joining by state sync"):
#   1. 4 validators (snapshot every 10 blocks) make blocks on a genesis of 50 participants;
#      validator 2 serves tampered chunks (a lying peer): each is refused and fetched elsewhere;
#      a peer flooding validator 0 with chunk requests (never reading) is dropped over its
#      budget while blocks keep coming;
#   2. an observer with an empty data dir joins with --state-sync, throttled (one chunk request
#      per 150 ms) so it can be killed (-9) mid-sync once 5 chunks are stored;
#   3. restarted, it resumes the same target: no chunk stored before the kill is fetched again,
#      and the two runs together fetch exactly the chunks the target has;
#   4. it installs the state, applies block h+1 and follows: its state root at its height is the
#      one the validators' next header holds, its blocks hash as theirs, and it holds no block
#      below h+1 (no history was replayed); restarted, it reports no damage and follows on;
#   5. a validator whose data dir is wiped rejoins by state sync and votes: with another
#      validator stopped, blocks still commit (they need its votes).
# Every process is started here, tracked by pid and killed on exit; every wait is bounded.
set -euo pipefail
B=${BUILD:-build}
T="$B/temctl"
D="$B/temd"
command -v curl >/dev/null && command -v jq >/dev/null || { echo "t_state_sync: FAIL: curl or jq missing (make deps installs it)"; exit 1; }
dir=$(mktemp -d /tmp/tem-ssync-XXXXXX)
. "$(dirname "${BASH_SOURCE[0]}")/lib_proc.sh"

# Ports 20000..20999; skip a block where any port answers (other tests share the machine).
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
base=$((20000 + ($$ % 50) * 20))
for _ in $(seq 1 50); do
  busy=0
  for o in 0 1 2 3 10 11 12 13 19; do port_busy $((base + o)) && busy=1 && break; done
  [ $busy = 0 ] && break
  base=$((20000 + (base - 20000 + 20) % 1000))
done
peer() { echo "127.0.0.1:$((base + $1))"; }
http() { echo "127.0.0.1:$((base + 10 + $1))"; }
OBS_HTTP="127.0.0.1:$((base + 19))"

for i in 0 1 2 3; do "$T" keygen --type validator --out "$dir/v$i.key" >/dev/null; done
"$T" keygen --type validator --out "$dir/obs.key" >/dev/null
"$T" keygen --type validator --out "$dir/flood.key" >/dev/null
args=()
for i in 0 1 2 3; do args+=(--validator "v$i:$dir/v$i.key:$(peer $i)@$(http $i)"); done
"$T" keygen --type meter --out "$dir/admin.key" >/dev/null
"$T" keygen --type meter --out "$dir/util.key" >/dev/null
for k in $(seq 1 50); do
  "$T" keygen --type meter --out "$dir/p$k.key" >/dev/null
  args+=(--participant "$dir/p$k.key:$((k % 30 + 2)):prosumer:$((1000000 + k))")
done
"$T" genesis --chain-id tem-ssync --time-ms $(( $(date +%s) * 1000 )) "${args[@]}" --admin "$dir/admin.key" \
  --participant "$dir/util.key:1:utility:0" --tariff 0:300000:80000 --slot-ms 60000 --out "$dir/g.json" 2>/dev/null \
  || fail "genesis"
pub() { jq -r .public "$dir/$1.key"; }
start() { # start NAME LOG extra-args...
  local name=$1 log=$2; shift 2
  "$D" --data-dir "$dir/$name" --genesis "$dir/g.json" "$@" --log-level info 2>>"$dir/$log.log" &
  PID[$name]=$!
}
# validator 2 lies: every chunk it serves has one value changed (sync_test_corrupt_chunks)
for i in 0 1 2 3; do
  bad=(); [ $i = 2 ] && bad=(--sync-test-corrupt-chunks true)
  start "n$i" "n$i" --key "$dir/v$i.key" --observer-key "$(pub obs)" --observer-key "$(pub flood)" \
    --sync-snapshot-interval 10 --block-interval-ms 1000 "${bad[@]}"
done
status() { curl -s -m 2 "http://$1/v1/status"; }
height() { status "$1" | jq -r .height 2>/dev/null || echo 0; }
# ---- 1. a snapshot to offer: block 10's state, with block 11 certified
end=$((SECONDS + 60))
until [ "$(height "$(http 0)")" -ge 12 ] 2>/dev/null; do
  [ $SECONDS -lt $end ] || fail "validators did not reach height 12"
  sleep 0.3
done
grep -q "state sync: serving the snapshot of height 10" "$dir/n0.log" || fail "validator 0 keeps no snapshot of height 10"
ok "4 validators at height $(height "$(http 0)") serve the snapshot of height 10"

# ---- 1b. a peer asking for chunks every 1 ms and never reading: dropped over its budget, the
# chain keeps its pace (harden_peer.py needs python3-cryptography)
if python3 -c "import cryptography" 2>/dev/null; then
  G=$(status "$(http 0)" | jq -r .genesis_hash)
  h0=$(height "$(http 0)")
  python3 "$(dirname "${BASH_SOURCE[0]}")/harden_peer.py" "$(peer 0)" "$G" "$dir/flood.key" chunkflood 6 10 >"$dir/flood.out" 2>&1 \
    || fail "chunkflood: $(cat "$dir/flood.out")"
  h1=$(height "$(http 0)")
  grep -q "state sync: peer [0-9]* asks for chunks too fast; dropping" "$dir/n0.log" || fail "validator 0 did not drop the flood"
  [ $((h1 - h0)) -ge 3 ] || fail "only $((h1 - h0)) blocks in the 6 s flood"
  ok "chunk flood on validator 0 ($(cat "$dir/flood.out")): dropped over budget, $((h1 - h0)) blocks meanwhile"
else
  fail "chunk flood: python3-cryptography missing (make deps installs it)"
fi

# ---- 2. join by state sync, killed mid-sync
obs_args=(--key "$dir/obs.key" --observer --http "$OBS_HTTP" --state-sync --sync-chunk-delay-ms 150)
start obs obs1 "${obs_args[@]}"
end=$((SECONDS + 40))
until [ "$(grep -c "state sync: stored chunk" "$dir/obs1.log" || true)" -ge 5 ]; do
  [ $SECONDS -lt $end ] || fail "observer stored no 5 chunks"
  grep -q "state sync: done" "$dir/obs1.log" && fail "sync finished before it could be killed: throttle more"
  sleep 0.05
done
kill -KILL "${PID[obs]}"; wait "${PID[obs]}" 2>/dev/null || true; unset "PID[obs]"
target=$(sed -n 's/.*state sync: target height \([0-9]*\) .*/\1/p' "$dir/obs1.log" | head -1)
tofetch=$(sed -n 's/.*state sync: target height [0-9]* (block [0-9a-f]*), [0-9]* chunks (\([0-9]*\) to fetch).*/\1/p' "$dir/obs1.log" | head -1)
[ -n "$target" ] && [ -n "$tofetch" ] || fail "no target line in the observer's log"
grep "state sync: stored chunk" "$dir/obs1.log" | sed 's/.*stored chunk \([0-9]*\) .*/\1/' | sort >"$dir/run1"
n1=$(wc -l <"$dir/run1")
[ "$n1" -lt "$tofetch" ] || fail "all $tofetch chunks were stored before the kill"
ok "observer killed after storing $n1 of $tofetch chunks of the snapshot of height $target"

# ---- 3. restart: it resumes
start obs obs2 "${obs_args[@]}"
end=$((SECONDS + 60))
until grep -q "state sync: done" "$dir/obs2.log"; do
  [ $SECONDS -lt $end ] || fail "restarted observer did not finish the sync"
  kill -0 "${PID[obs]}" 2>/dev/null || fail "restarted observer exited"
  sleep 0.2
done
line=$(grep "state sync: resuming the sync to height" "$dir/obs2.log" | head -1)
[ -n "$line" ] || fail "the restarted observer did not resume"
resumed_h=$(sed 's/.*resuming the sync to height \([0-9]*\):.*/\1/' <<<"$line")
stored=$(sed 's/.*: \([0-9]*\) chunks already stored.*/\1/' <<<"$line")
[ "$resumed_h" = "$target" ] || fail "resumed height $resumed_h, want $target"
[ "$stored" -ge "$n1" ] || fail "resumed with $stored chunks stored, but $n1 were logged stored before the kill"
grep -q "state sync: target height" "$dir/obs2.log" && fail "the restarted observer chose a new target"
grep "state sync: stored chunk" "$dir/obs2.log" | sed 's/.*stored chunk \([0-9]*\) .*/\1/' | sort >"$dir/run2"
again=$(comm -12 "$dir/run1" "$dir/run2" | wc -l)
[ "$again" = 0 ] || fail "$again chunks stored before the kill were fetched again: $(comm -12 "$dir/run1" "$dir/run2" | tr '\n' ' ')"
n2=$(wc -l <"$dir/run2")
[ $((stored + n2)) = "$tofetch" ] || fail "stored $stored before + $n2 after the restart, want $tofetch"
ok "restart resumed height $target with $stored chunks stored; fetched the other $n2, none twice"
refused=$(cat "$dir/obs1.log" "$dir/obs2.log" | grep -c "state sync: refused chunk [0-9]* from peer 2" || true)
[ "$refused" -ge 1 ] || fail "no chunk from the lying validator 2 was refused"
cat "$dir/obs1.log" "$dir/obs2.log" | grep -q "state sync: stored chunk [0-9]* ([0-9]* entries) from peer 2," && fail "a chunk from the lying validator 2 was stored"
ok "$refused tampered chunks from validator 2 refused and fetched from the others"

# ---- 4. same root, then it follows
grep -q "state sync: installed the state of height $target" "$dir/obs2.log" || fail "no install line"
H0=$(height "$(http 0)")
end=$((SECONDS + 40))
until [ "$(height "$OBS_HTTP")" -ge $((H0 + 2)) ] 2>/dev/null; do
  [ $SECONDS -lt $end ] || fail "observer did not follow to $((H0 + 2)) (at $(height "$OBS_HTTP"))"
  sleep 0.2
done
st=$(status "$OBS_HTTP")
oh=$(jq -r .height <<<"$st")
oroot=$(jq -r .state_root <<<"$st")
end=$((SECONDS + 20))
until curl -sf -m 2 "http://$(http 1)/v1/blocks/$((oh + 1))" >"$dir/next.json"; do
  [ $SECONDS -lt $end ] || fail "validator 1 has no block $((oh + 1))"
  sleep 0.2
done
vroot=$(jq -r .header.state_root "$dir/next.json")
[ "$oroot" = "$vroot" ] || fail "observer root at $oh is $oroot, validators' header $((oh + 1)) says $vroot"
for h in $((target + 1)) "$oh"; do
  a=$(curl -s -m 2 "http://$OBS_HTTP/v1/blocks/$h" | jq -r .hash)
  b=$(curl -s -m 2 "http://$(http 2)/v1/blocks/$h" | jq -r .hash)
  [ "$a" = "$b" ] && [ -n "$a" ] && [ "$a" != null ] || fail "block $h: observer $a, validator $b"
done
code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 "http://$OBS_HTTP/v1/blocks/$target")
[ "$code" = 404 ] || fail "observer answers $code for block $target: it should hold no history below $((target + 1))"
ok "observer at $oh has the validators' root $oroot and their blocks $((target + 1))..$oh, none below"

# ---- 4b. restarted, the synced observer finds its store whole (no block below h+1 is missing
# damage) and follows on
kill -TERM "${PID[obs]}"; wait "${PID[obs]}" 2>/dev/null || true; unset "PID[obs]"
start obs obs3 "${obs_args[@]}"
end=$((SECONDS + 30))
until [ "$(height "$OBS_HTTP")" -gt "$oh" ] 2>/dev/null; do
  [ $SECONDS -lt $end ] || fail "restarted synced observer does not follow"
  sleep 0.2
done
grep -Eq "is damaged|is corrupt" "$dir/obs3.log" && fail "restarted synced observer reports damage: $(grep -E "is damaged|is corrupt" "$dir/obs3.log" | head -2)"
grep -q "tail check: blocks $((target + 1))\.\.[0-9]* checked against their certificates, 0 damaged" "$dir/obs3.log" \
  || fail "restarted synced observer: no clean tail check from $((target + 1)): $(grep "tail check" "$dir/obs3.log")"
grep -q "state sync: the store is at height" "$dir/obs3.log" || fail "restarted observer did not skip the sync"
ok "restarted synced observer: no damage reported, follows from $oh"

# ---- 5. a validator that lost its data dir rejoins by state sync and votes again
kill -KILL "${PID[n3]}"; wait "${PID[n3]}" 2>/dev/null || true; unset "PID[n3]"
rm -rf "$dir/n3"
start n3 n3b --key "$dir/v3.key" --observer-key "$(pub obs)" --sync-snapshot-interval 10 --block-interval-ms 1000 --state-sync
end=$((SECONDS + 60))
until grep -q "voting from now on" "$dir/n3b.log"; do
  [ $SECONDS -lt $end ] || fail "validator 3 did not rejoin by state sync and vote"
  kill -0 "${PID[n3]}" 2>/dev/null || fail "validator 3 exited"
  sleep 0.2
done
grep -q "state sync: done" "$dir/n3b.log" || fail "validator 3 rejoined without state sync"
vt=$(sed -n 's/.*state sync: target height \([0-9]*\) .*/\1/p' "$dir/n3b.log" | head -1)
# with validator 1 stopped, blocks need validator 3's votes
kill -STOP "${PID[n1]}"
H1=$(height "$(http 0)")
end=$((SECONDS + 40))
until [ "$(height "$(http 0)")" -ge $((H1 + 3)) ] 2>/dev/null; do
  [ $SECONDS -lt $end ] || { kill -CONT "${PID[n1]}"; fail "no blocks without validator 1: validator 3 does not vote"; }
  sleep 0.2
done
kill -CONT "${PID[n1]}"
h3=$(height "$(http 3)")
a=$(curl -s -m 2 "http://$(http 3)/v1/blocks/$h3" | jq -r .hash)
b=$(curl -s -m 2 "http://$(http 0)/v1/blocks/$h3" | jq -r .hash)
[ "$a" = "$b" ] && [ "$a" != null ] || fail "validator 3 block $h3 is $a, validator 0 has $b"
ok "validator 3 lost its data dir, rejoined from the snapshot of height $vt, and its votes commit blocks (same hash at $h3)"
echo "t_state_sync: $passed passed"
