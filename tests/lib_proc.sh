# lib_proc.sh: sourced by the scripted tests that start processes. Set `dir` (the test's temp
# folder) before sourcing. Gives: PID (name -> pid of every process started; each one is killed
# on exit, CONT and TERM first so a stopped one dies too, KILL after 3 s), fail MSG (prints MSG
# and the tail of every $dir/*.log, exits 1), ok MSG (counts a passed check in $passed and
# prints it with the seconds since the start), expect_rc WANT CMD... (runs CMD with its
# stdout in $dir/out and stderr in $dir/err and fails unless it exits WANT). KEEP=1 keeps $dir.
declare -A PID=()
passed=0
cleanup() {
  for k in "${!PID[@]}"; do kill -CONT "${PID[$k]}" 2>/dev/null || true; kill -TERM "${PID[$k]}" 2>/dev/null || true; done
  for _ in $(seq 1 30); do
    alive=0
    for k in "${!PID[@]}"; do kill -0 "${PID[$k]}" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for k in "${!PID[@]}"; do kill -KILL "${PID[$k]}" 2>/dev/null || true; done
  if [ "${KEEP:-}" = 1 ]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for f in "$dir"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 25 "$f"; }; done
  exit 1
}
ok() { passed=$((passed+1)); echo "ok - $* [${SECONDS}s]"; }
expect_rc() { # want cmd...
  local want=$1; shift
  set +e; "$@" >"$dir/out" 2>"$dir/err"; local rc=$?; set -e
  [ "$rc" = "$want" ] || fail "$* exited $rc, want $want: $(head -c 300 "$dir/err")"
}
# A 4-validator cluster (needs $D, the temd binary, and `http I`, validator I's HTTP address):
# start_validators TAG ROOT starts validators 0..3 (keys $dir/v$i.key) on ROOT/g.json, data in
# ROOT/n$i, logs in $dir/TAG$i.log, pids in PID[TAG$i]. wait_blocks URL MIN WHAT waits up to 30 s
# for URL/v1/status to report height MIN, else fails "WHAT did not commit MIN blocks".
start_validators() { # tag root
  local i
  for i in 0 1 2 3; do
    "$D" --data-dir "$2/n$i" --genesis "$2/g.json" --key "$dir/v$i.key" --log-level info 2>>"$dir/$1$i.log" &
    PID[$1$i]=$!
  done
}
wait_blocks() { # url min what
  local h=0 _
  for _ in $(seq 1 150); do
    h=$(curl -s -m 1 "$1/v1/status" | jq -r .height 2>/dev/null || echo 0)
    [ "${h:-0}" -ge "$2" ] 2>/dev/null && return 0
    sleep 0.2
  done
  fail "$3 did not commit $2 blocks"
}
