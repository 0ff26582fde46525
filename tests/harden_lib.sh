# harden_lib.sh: shared set-up of the t_harden*.sh scenario tests (issue #12), sourced.
# Provides: a temp dir, a genesis with NV validators (default 4) on 127.0.0.1, start/stop of
# temd by pid, status helpers, and a cleanup trap that kills every process it started.
set -euo pipefail
B=${BUILD:-build}
T="$B/temctl"
D=${TEMD:-$B/temd} # TEMD= runs the scenario against another build (before/after figures)
NAME=${NAME:-harden}
NV=${NV:-4}
for tool in curl jq python3; do
  command -v $tool >/dev/null || { echo "$NAME: FAIL: $tool missing (make deps installs it)"; exit 1; }
done
python3 -c 'import cryptography' 2>/dev/null || { echo "$NAME: FAIL: python3-cryptography missing (make deps)"; exit 1; }
"$D" --version >/dev/null || { echo "$NAME: FAIL: $D --version failed"; exit 1; }
dir=$(mktemp -d /tmp/tem-$NAME-XXXXXX)
. "$(dirname "${BASH_SOURCE[0]}")/lib_proc.sh"

base=$((12000 + ($$ % 500) * 30))
peer() { echo "127.0.0.1:$((base + $1))"; }
http() { echo "127.0.0.1:$((base + 10 + $1))"; }

for i in $(seq 0 $((NV - 1))); do "$T" keygen --type validator --out "$dir/v$i.key" >/dev/null; done
for k in obs obs1 obs2 obs3 obs4; do "$T" keygen --type validator --out "$dir/$k.key" >/dev/null; done
"$T" keygen --type validator --out "$dir/stranger.key" >/dev/null
for k in admin p1 p2 p3 p4 p5 p6 p7 p8 p9; do "$T" keygen --type meter --out "$dir/$k.key" >/dev/null; done
gargs=()
for i in $(seq 0 $((NV - 1))); do gargs+=(--validator "v$i:$dir/v$i.key:$(peer $i)@$(http $i)"); done
bus=2
for k in p1 p2 p3 p4 p5 p6 p7 p8 p9; do gargs+=(--participant "$dir/$k.key:$bus:prosumer:100000000000"); bus=$((bus+1)); done
"$T" genesis --chain-id tem-$NAME --time-ms $(( $(date +%s) * 1000 )) "${gargs[@]}" --admin "$dir/admin.key" \
  --tariff 0:300000:80000 --slot-ms 60000 --out "$dir/g.json" 2>/dev/null
pub() { jq -r .public "$dir/$1.key"; }

start() { # start NAME extra-args...
  local name=$1; shift
  "$D" --data-dir "$dir/$name" --genesis "$dir/g.json" "$@" --log-level info 2>>"$dir/$name.log" &
  PID[$name]=$!
}
j() { jq -r "$1"; }
status() { curl -s -m 2 "http://$(http "$1")/v1/status"; }
height() { status "$1" | j .height 2>/dev/null || echo 0; }
wait_height() { # node min timeout_s
  local end=$((SECONDS + $3))
  while [ $SECONDS -lt $end ]; do [ "$(height "$1")" -ge "$2" ] 2>/dev/null && return 0; sleep 0.2; done
  return 1
}
alive() { kill -0 "${PID[$1]}" 2>/dev/null; }
ghash() { status 0 | j .genesis_hash; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/${PID[$1]}/status"; }
# Validators list the observer keys obs, obs1..obs4 (not "stranger"). OLD=1: a build from before
# issue #12, which has no observer_key and admits any key.
obsargs=()
if [ "${OLD:-}" != 1 ]; then for k in obs obs1 obs2 obs3 obs4; do obsargs+=(--observer-key "$(pub $k)"); done; fi
start_all() { # extra args for every validator
  for i in $(seq 0 $((NV - 1))); do start "n$i" --key "$dir/v$i.key" "${obsargs[@]}" "$@"; done
  for i in $(seq 0 $((NV - 1))); do wait_height $i 2 40 || fail "node $i did not commit 2 blocks"; done
}
