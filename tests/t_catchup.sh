#!/usr/bin/env bash
# A validator that was stopped while the others committed more blocks than its vote window
# (2 x checkpoint_interval) rejoins a quiet chain by asking each validator that connects for the
# blocks above its tip (node/node.c on_peer_up), not by waiting for the next checkpoint message or
# for its own view timer (docs/performance.md, "Replay and catch-up").
#
# The chain is made so that the old ways cannot finish within the bound below: when no tx waits
# a block comes every 30 s (the next votes validator 3 could learn from), a checkpoint is signed
# every 4 blocks, and the view timeout is 120 s. Before the fix it took 19 s with blocks every
# 10 s. Checks: the restarted validator reaches the others' height within 8 s; it is in the
# others' view; it logged no view change of its own (before the fix it sat alone in a view change
# and came back only at the next checkpoint).
set -euo pipefail
B=${BUILD:-build}
command -v curl >/dev/null && command -v jq >/dev/null || { echo "t_catchup: FAIL: curl or jq missing (make deps installs it)"; exit 1; }
CHAIN_GENESIS_JQ='.consensus = {"checkpoint_interval": 4, "view_timeout_ms": 120000}'
CHAIN_TEMD_ARGS='--block-interval-ms 30000'
CHAIN_START_HEIGHT=0
. "$(dirname "$0")/lib_chain.sh"
chain_start

status() { curl -s -m 2 "http://$(http "$1")/v1/status"; }
height() { status "$1" | jq -r .height 2>/dev/null || echo 0; }
view() { status "$1" | jq -r .view 2>/dev/null || echo -1; }

commit_on() { # node txid: waits up to 30 s for the tx to be committed on that node
  local end=$((SECONDS + 30))
  until [ "$(curl -s -m 2 "http://$(http "$1")/v1/tx/$2" | jq -r .status 2>/dev/null || true)" = committed ]; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.1
  done
}
# First a block that validator 3 votes on, so that it restarts with a vote record (a validator
# with an empty data dir follows the chain without voting until past the tip: another path).
p2pub=$(jq -r .public "$dir/p2.key")
id=$("$T" submit --node "http://$(http 0)" --key "$dir/p1.key" --nonce 0 transfer --to "$p2pub" --amount 1) || fail "transfer refused"
commit_on 3 "$id" || fail "the first transfer did not commit on validator 3"
kill -TERM "${PID[n3]}"
wait "${PID[n3]}" 2>/dev/null || true
unset "PID[n3]"

# One transfer at a time, each committed before the next: 12 in all (a block or two each; the
# window is 8 blocks).
start_h=$(height 0)
t_sub=$SECONDS
for n in $(seq 1 12); do
  id=$("$T" submit --node "http://$(http $((n % 3)))" --key "$dir/p1.key" --nonce $n transfer --to "$p2pub" --amount 1) \
    || fail "transfer $n refused"
  commit_on 0 "$id" || fail "transfer $n ($id) did not commit in 30 s"
done
echo "# 12 transfers committed in $((SECONDS - t_sub)) s"
H=$(height 0)
[ "$H" -ge $((start_h + 12)) ] || fail "the chain went from $start_h to only $H"
ok "validator 3 stopped; the others committed $((H - start_h)) blocks (to height $H), more than its window of 8"

lines_before=$(wc -l <"$dir/n3.log")
"$D" --data-dir "$dir/n3" --genesis "$dir/g.json" --key "$dir/v3.key" --log-level info $CHAIN_TEMD_ARGS 2>>"$dir/n3.log" &
PID[n3]=$!
end=$((SECONDS + 8))
until [ "$(height 3)" -ge "$H" ] 2>/dev/null; do
  [ $SECONDS -lt $end ] || fail "restarted validator 3 is at height $(height 3), not $H, after 8 s (tail of its log: $(tail -3 "$dir/n3.log"))"
  sleep 0.1
done
ok "restarted validator 3 reached height $H on a quiet chain within 8 s (blocks 30 s apart when idle, view timeout 120 s)"

v0=$(view 0)
v3=$(view 3)
[ "$v3" = "$v0" ] || fail "validator 3 is in view $v3, the others in $v0"
if tail -n +$((lines_before + 1)) "$dir/n3.log" | grep -q "view change to"; then
  fail "validator 3 started a view change of its own: $(tail -n +$((lines_before + 1)) "$dir/n3.log" | grep "view change to" | head -1)"
fi
ok "validator 3 is in the others' view ($v0) and started no view change"

# It votes again: the next block needs it when one of the others is stopped.
kill -STOP "${PID[n2]}"
id=$("$T" submit --node "http://$(http 0)" --key "$dir/p1.key" --nonce 13 transfer --to "$p2pub" --amount 1) || fail "transfer refused"
commit_on 3 "$id" || { kill -CONT "${PID[n2]}"; fail "with validator 2 stopped, no block committed: validator 3 does not vote"; }
kill -CONT "${PID[n2]}"
ok "with validator 2 stopped, validators 0, 1 and 3 commit: validator 3 votes again"
echo "t_catchup: all passed"
