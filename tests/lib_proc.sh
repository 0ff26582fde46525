# lib_proc.sh: sourced by the scripted tests that start processes. Set `dir` (the test's temp
# folder) before sourcing. Gives: PID (name -> pid of every process started; each one is killed
# on exit, TERM first, KILL after 3 s), fail MSG (prints MSG and the tail of every $dir/*.log,
# exits 1), ok MSG (counts a passed check in $passed), expect_rc WANT CMD... (runs CMD with its
# stdout in $dir/out and stderr in $dir/err and fails unless it exits WANT). KEEP=1 keeps $dir.
declare -A PID=()
passed=0
cleanup() {
  for k in "${!PID[@]}"; do kill -TERM "${PID[$k]}" 2>/dev/null || true; done
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
  for f in "$dir"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }; done
  exit 1
}
ok() { passed=$((passed+1)); echo "ok - $*"; }
expect_rc() { # want cmd...
  local want=$1; shift
  set +e; "$@" >"$dir/out" 2>"$dir/err"; local rc=$?; set -e
  [ "$rc" = "$want" ] || fail "$* exited $rc, want $want: $(head -c 300 "$dir/err")"
}
