#!/usr/bin/env bash
# genesis_scale.sh [N]: time and peak RSS of temd starting on a genesis with N participants
# (default 1,000,000). Validator 0 starts alone (first start: parses the genesis, builds the state
# and its tree; measured until its HTTP API answers), then validators 1-3 start and the chain must
# commit 2 blocks; then validator 0 restarts alone on its data dir (opens state and tree).
# Prints `scale ...` lines (start_s: wall seconds until the HTTP API answers; start_cpu_s: the
# process's CPU seconds by then, which is what a shared machine does not inflate; maxrss_mib:
# peak RSS); docs/performance.md quotes them. KEEP=1 keeps the directory.
set -euo pipefail
N=${1:-1000000}
B=${BUILD:-build}
T="$B/temctl"
D="$B/temd"
command -v curl >/dev/null && command -v jq >/dev/null && command -v bc >/dev/null \
  || { echo "genesis_scale: SKIP: curl, jq or bc missing"; exit 0; }
dir=$(mktemp -d /tmp/tem-scale-XXXXXX)
declare -A PID=()
cleanup() {
  for k in "${!PID[@]}"; do kill -TERM "${PID[$k]}" 2>/dev/null || true; done
  sleep 1
  for k in "${!PID[@]}"; do kill -KILL "${PID[$k]}" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
base=$((22000 + ($$ % 400) * 20))
peer() { echo "127.0.0.1:$((base + $1))"; }
http() { echo "127.0.0.1:$((base + 10 + $1))"; }
vargs=()
for i in 0 1 2 3; do
  "$T" keygen --type validator --out "$dir/v$i.key" >/dev/null
  vargs+=(--validator "v$i:$dir/v$i.key:$(peer $i)@$(http $i)")
done
t0=$(date +%s.%N)
python3 "$(dirname "$0")/gen_genesis.py" --participants "$N" "${vargs[@]}" --out "$dir/g.json"
t1=$(date +%s.%N)
echo "scale genesis_file participants=$N mib=$(( $(stat -c %s "$dir/g.json") >> 20 )) write_s=$(echo "$t1 - $t0" | bc)"
start() { # i
  "$D" --data-dir "$dir/d$1" --genesis "$dir/g.json" --key "$dir/v$1.key" --log-level warn \
    </dev/null >/dev/null 2>>"$dir/v$1.log" &
  PID[v$1]=$!
}
wait_up() { # i -> prints seconds since $2
  for _ in $(seq 1 3000); do
    curl -s -m 1 "http://$(http "$1")/v1/status" >/dev/null 2>&1 && { echo "$(date +%s.%N) - $2" | bc; return 0; }
    kill -0 "${PID[v$1]}" 2>/dev/null || { tail -20 "$dir/v$1.log"; echo "FAIL: temd v$1 exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "FAIL: temd v$1 did not answer in 300 s" >&2; exit 1
}
height() { curl -s -m 2 "http://$(http "$1")/v1/status" | jq -r .height 2>/dev/null || echo 0; }
stop() { kill -TERM "${PID[v$1]}" 2>/dev/null || true; wait "${PID[v$1]}" 2>/dev/null || true; unset "PID[v$1]"; }
cpu() { awk -v t="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / t}' "/proc/${PID[v$1]}/stat"; } # CPU s so far
rss() { echo $(( $(awk '/^VmHWM/ {print $2}' "/proc/${PID[v$1]}/status") / 1024 )); } # peak RSS, MiB

s=$(date +%s.%N); start 0; up=$(wait_up 0 "$s"); c=$(cpu 0)
for i in 1 2 3; do start $i; done
for i in 1 2 3; do wait_up $i "$s" >/dev/null; done
s2=$(date +%s.%N)
for _ in $(seq 1 1200); do [ "$(height 0)" -ge 2 ] && break; sleep 0.1; done
h=$(height 0)
[ "$h" -ge 2 ] || { echo "FAIL: no blocks committed"; exit 1; }
blocks=$(echo "$(date +%s.%N) - $s2" | bc)
r=$(rss 0)
for i in 0 1 2 3; do stop $i; done
echo "scale temd_first_start participants=$N start_s=$up start_cpu_s=$c maxrss_mib=$r two_blocks_after_all_up_s=$blocks"
s=$(date +%s.%N); start 0; up=$(wait_up 0 "$s"); c=$(cpu 0); r=$(rss 0); stop 0
echo "scale temd_restart participants=$N start_s=$up start_cpu_s=$c maxrss_mib=$r"
echo "scale data_dir_mib=$(du -sm "$dir/d0" | cut -f1)"
