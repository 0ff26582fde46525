#!/usr/bin/env bash
# The vote store (node/votes.c, issue #15): the pBFT vote record lives in <data_dir>/votes, an
# LMDB environment of its own, so a vote never waits for a block's commit.
#   1. a data dir from before the vote store (record in data.mdb's meta table, no votes/) is
#      moved at start: temd logs the move, restores the votes, data.mdb keeps only the mark, and
#      the validator's votes commit blocks;
#   2. a validator restarted with data.mdb but without votes/ does not vote at once, nor after
#      one more restart: it follows the chain until past the tip f+1 validators name, then its
#      votes commit blocks;
#   3. after that a restart restores its votes as usual.
# Needs python3-lmdb to write the older layout (make deps installs it; missing, it fails).
NAME=votes
source "$(dirname "$0")/harden_lib.sh"
PY3=/usr/bin/python3
$PY3 -c 'import lmdb' 2>/dev/null || { echo "t_votes: FAIL: python3-lmdb missing (make deps installs it)"; exit 1; }

stop_node() { # name: SIGTERM, wait for the exit
  kill -TERM "${PID[$1]}"
  wait "${PID[$1]}" 2>/dev/null || true
  unset "PID[$1]"
}
# Blocks commit while validator $1 is stopped only if the other three, $2 among them, vote.
commits_without() { # stopped_index voter_index
  kill -STOP "${PID[n$1]}"
  local h; h=$(height 0)
  wait_height 0 $((h + 3)) 40 || { kill -CONT "${PID[n$1]}"; fail "no blocks without validator $1: validator $2 does not vote"; }
  kill -CONT "${PID[n$1]}"
}

start_all
ok "4 validators commit"

# ---- 1. an older data dir: the record goes back into data.mdb, votes/ goes away
stop_node n2
[ -f "$dir/n2/votes/data.mdb" ] || fail "validator 2 has no $dir/n2/votes/data.mdb"
$PY3 - "$dir/n2" <<'PY' || fail "cannot write the older layout"
import lmdb, os, shutil, sys
d = sys.argv[1]
v = lmdb.open(os.path.join(d, "votes"), readonly=True, lock=False)
with v.begin() as t:
    rec = t.get(b"pbft/votes")
v.close()
assert rec is not None and len(rec) > 0, "no vote record in votes/"
e = lmdb.open(d, max_dbs=16, map_size=64 << 30)
meta = e.open_db(b"meta", create=False)
with e.begin(write=True) as t:
    t.put(b"u/pbft/votes", rec, db=meta)
e.close()
shutil.rmtree(os.path.join(d, "votes"))
PY
start n2 --key "$dir/v2.key" "${obsargs[@]}"
end=$((SECONDS + 30))
until grep -q "restored persisted votes" "$dir/n2.log"; do
  [ $SECONDS -lt $end ] || fail "validator 2 did not restore its votes after the move"
  alive n2 || fail "validator 2 exited"
  sleep 0.2
done
grep -q "moved the vote record from data.mdb to $dir/n2/votes" "$dir/n2.log" || fail "no log line for the move"
$PY3 - "$dir/n2" <<'PY' || fail "data.mdb does not hold the mark after the move"
import lmdb, sys
e = lmdb.open(sys.argv[1], max_dbs=16, map_size=64 << 30, readonly=True)
with e.begin() as t:
    v = t.get(b"u/pbft/votes", db=e.open_db(b"meta", txn=t, create=False))
assert v is not None and v[:1] == b"\0", v
PY
commits_without 1 2
ok "older data dir: record moved to votes/, data.mdb holds the mark, validator 2's votes commit blocks"

# ---- 2. votes/ lost beside data.mdb; restarted again before it could vote
stop_node n3
rm -rf "$dir/n3/votes"
start3() { # log
  "$D" --data-dir "$dir/n3" --genesis "$dir/g.json" --key "$dir/v3.key" "${obsargs[@]}" --log-level info 2>>"$dir/$1.log" &
  PID[n3]=$!
}
wait_log() { # file pattern what
  local end=$((SECONDS + 60))
  until grep -q "$2" "$1"; do
    [ $SECONDS -lt $end ] || fail "$3"
    alive n3 || fail "validator 3 exited"
    sleep 0.2
  done
}
# The others are stopped, so no tip reaches validator 3 and it cannot start voting in between.
for i in 0 1 2; do kill -STOP "${PID[n$i]}"; done
start3 n3b
wait_log "$dir/n3b.log" "was missing though data.mdb had one" "validator 3 did not notice votes/ was lost"
stop_node n3
start3 n3c
wait_log "$dir/n3c.log" "was missing though data.mdb had one" "validator 3 forgot at a restart that votes/ was lost"
for i in 0 1 2; do kill -CONT "${PID[n$i]}"; done
wait_log "$dir/n3c.log" "voting from now on" "validator 3 did not start voting after losing votes/"
grep -q "restored persisted votes" "$dir/n3b.log" "$dir/n3c.log" && fail "validator 3 restored votes it no longer has"
line=$(grep "caught up to height" "$dir/n3c.log" | head -1)
h=$(sed -n 's/.*caught up to height \([0-9]*\) past the tip \([0-9]*\).*/\1/p' <<<"$line")
tip=$(sed -n 's/.*caught up to height \([0-9]*\) past the tip \([0-9]*\).*/\2/p' <<<"$line")
[ -n "$h" ] && [ -n "$tip" ] && [ "$h" -gt "$tip" ] || fail "validator 3 started voting at $h, not past the tip $tip: $line"
commits_without 1 3
ok "votes/ lost: validator 3 (restarted once more meanwhile) followed to $h past the tip $tip without voting, then its votes commit blocks"

# ---- 3. once it votes again, a restart restores its votes as usual
stop_node n3
start3 n3d
wait_log "$dir/n3d.log" "restored persisted votes" "validator 3 did not restore its votes after voting again"
grep -q "was missing though data.mdb had one" "$dir/n3d.log" && fail "validator 3 still thinks votes/ is lost"
commits_without 1 3
ok "after voting again: validator 3 restarts with its votes and no warning"

echo "t_votes: $passed passed"
