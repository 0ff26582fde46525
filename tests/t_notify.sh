#!/usr/bin/env bash
# temd speaks systemd's notify protocol (deploy/temd.service is Type=notify): with NOTIFY_SOCKET
# set, it sends READY=1 only once its HTTP API answers, and STOPPING=1 on SIGTERM. The socket is
# a Unix datagram socket this test binds itself (python3), as systemd would.
# Every process is started here, tracked by pid and killed on exit; every wait is bounded.
set -euo pipefail
B=${BUILD:-build}
T="$B/temctl"
D="$B/temd"
PY=/usr/bin/python3
for c in curl jq "$PY"; do command -v "$c" >/dev/null || { echo "t_notify: FAIL: $c missing (make deps installs it)"; exit 1; }; done
dir=$(mktemp -d /tmp/tem-notify-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.2
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; [ -f "$dir/n0.log" ] && tail -n 15 "$dir/n0.log"; exit 1; }

base=$((14000 + ($$ % 500) * 10))
for i in 0 1 2 3; do "$T" keygen --type validator --out "$dir/v$i.key" >/dev/null; done
"$T" keygen --type meter --out "$dir/admin.key" >/dev/null
args=()
for i in 0 1 2 3; do args+=(--validator "v$i:$dir/v$i.key:127.0.0.1:$((base + i))@127.0.0.1:$((base + 5 + i))"); done
"$T" genesis --chain-id tem-notify --time-ms $(( $(date +%s) * 1000 )) "${args[@]}" --admin "$dir/admin.key" \
  --tariff 0:300000:80000 --slot-ms 60000 --out "$dir/g.json" 2>/dev/null

# The listener records each datagram on its own line; it exits after STOPPING=1 or 60 s.
"$PY" - "$dir/notify.sock" "$dir/notify.txt" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1]); s.settimeout(1.0)
end = time.time() + 60
with open(sys.argv[2], "a", buffering=1) as out:
    while time.time() < end:
        try: m = s.recv(4096).decode()
        except socket.timeout: continue
        out.write(m.replace("\n", " ") + "\n")
        if "STOPPING=1" in m: break
PY
pids+=($!)
for _ in $(seq 1 50); do [ -S "$dir/notify.sock" ] && break; sleep 0.1; done
[ -S "$dir/notify.sock" ] || fail "listener did not bind"

NOTIFY_SOCKET="$dir/notify.sock" "$D" --data-dir "$dir/n0" --genesis "$dir/g.json" --key "$dir/v0.key" \
  --log-format json 2>"$dir/n0.log" &
tp=$!; pids+=($tp)
for _ in $(seq 1 100); do grep -q 'READY=1' "$dir/notify.txt" 2>/dev/null && break; sleep 0.1; done
grep -q 'READY=1' "$dir/notify.txt" || fail "no READY=1 within 10 s"
curl -sf -m 2 "http://127.0.0.1:$((base + 5))/v1/status" | jq -e '.chain_id == "tem-notify"' >/dev/null || fail "READY=1 sent but the API does not answer"
grep 'READY=1' "$dir/notify.txt" | grep -q 'STATUS=validator 0 of chain tem-notify' || fail "READY without a STATUS line: $(cat "$dir/notify.txt")"
echo "ok - READY=1 with STATUS once the API answers"
kill -TERM $tp
for _ in $(seq 1 100); do kill -0 $tp 2>/dev/null || break; sleep 0.1; done
kill -0 $tp 2>/dev/null && fail "temd did not stop on SIGTERM"
wait $tp && rc=0 || rc=$?
[ $rc = 0 ] || fail "temd exited $rc on SIGTERM"
grep -q 'STOPPING=1' "$dir/notify.txt" || fail "no STOPPING=1 on SIGTERM"
echo "ok - STOPPING=1 on SIGTERM, exit 0"
# --log-format json: every line temd itself writes is one JSON object with the fixed keys, and
# the start-up line names version, chain and genesis hash.
gh=$(sha256sum "$dir/g.json" | cut -c1-64)
grep '^{' "$dir/n0.log" | jq -e -s 'length > 3 and all(.[]; (.ts|type) == "string" and (.level|type) == "string" and (.height|type) == "number" and (.msg|type) == "string")' >/dev/null ||
  fail "JSON log lines do not all parse with ts, level, height, msg"
grep '^{' "$dir/n0.log" | head -1 | jq -e --arg gh "$gh" '.msg | test("^temd [0-9.]+ config \\(flags\\) chain tem-notify genesis " + $gh + ", validator 0")' >/dev/null ||
  fail "start-up line: $(head -1 "$dir/n0.log")"
echo "ok - --log-format json: one object per line; the start-up line names version, chain, genesis hash, role"
echo "t_notify: 3 passed, 0 failed"
