#!/usr/bin/env bash
# Issue #12, attack 1: a client that writes and leaves without reading must cost its own
# connection only. Before the fix temd died of SIGPIPE (status 141, nothing logged).
#   a. HTTP: 20 clients each pipeline 200 requests and reset the connection without reading;
#   b. peer: an observer sends 64 block requests and resets, 20 times;
# after each, temd is still running and still commits blocks.
NAME=harden-sigpipe
source "$(dirname "$0")/harden_lib.sh"
start_all

ok "4 validators commit"

python3 - "$(http 0)" <<'PY' || fail "HTTP pipelining client failed"
import socket, struct, sys
host, port = sys.argv[1].rsplit(":", 1)
req = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n" * 200
for _ in range(20):
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(req)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
PY
sleep 1
alive n0 || fail "temd died after HTTP clients left without reading ($(wait "${PID[n0]}"; echo "status $?"))"
h=$(height 0)
wait_height 0 $((h + 2)) 20 || fail "no blocks after the HTTP attack"
ok "HTTP: 20 x 200 pipelined requests, reset unread: temd alive, still committing"

python3 "$(dirname "$0")/harden_peer.py" "$(peer 0)" "$(ghash)" "$dir/obs.key" sigpipe 20 >/dev/null \
  || fail "peer client failed"
sleep 1
alive n0 || fail "temd died after peers left without reading ($(wait "${PID[n0]}"; echo "status $?"))"
h=$(height 0)
wait_height 0 $((h + 2)) 20 || fail "no blocks after the peer attack"
ok "peer: 20 x 64 block requests, reset unread: temd alive, still committing"
echo "t_harden_sigpipe: $passed passed"
