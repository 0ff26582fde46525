#!/bin/bash
# t_netns.sh: the testnet in network namespaces (deploy/netns-testnet.sh): one validator cut off
# for several view-change timeouts while the other three keep committing; healed, it catches
# up; with 100 ms delay and 5% loss on every link the chain keeps committing. Skipped with a
# printed reason when not root, without `ip netns`, or before temd is a node. Bounded: every
# wait has a deadline; the trap stops the nodes by pid and removes namespaces and bridge.
set -u
BUILD=${BUILD:-build}
ver=$("$BUILD/temd" --version 2>/dev/null | head -1)
[[ $ver == temd\ * ]] || { echo "FAIL: $BUILD/temd --version does not report a node (got '$ver')"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "SKIP: t_netns needs root for network namespaces"; exit 0; }
command -v ip >/dev/null && command -v tc >/dev/null || { echo "FAIL: t_netns: iproute2 (ip, tc) missing (make deps installs it)"; exit 1; }
command -v jq >/dev/null && command -v curl >/dev/null || { echo "FAIL: curl and jq are needed"; exit 1; }
probe=tp$$
if ! ip netns add "$probe" 2>/dev/null; then echo "SKIP: cannot create network namespaces here"; exit 0; fi
ip netns del "$probe"

export BUILD TEM_NETNS_PREFIX=tn$$ TEM_NETNS_SUBNET=10.$((100 + $$ % 100)).$((RANDOM % 250)) TEM_BASE_PORT=26600
NS=deploy/netns-testnet.sh
tmp=$(mktemp -d)
cleanup() {
    bash $NS down "$tmp/tn" >/dev/null 2>&1
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for i in 0 1 2 3; do tail -3 "$tmp/tn/node$i/temd.log" 2>/dev/null; done; exit 1; }

height() { curl -s --max-time 2 "http://$(bash $NS addr "$1"):26700/v1/status" | jq -r '.height // empty' 2>/dev/null; }
# wait_height NODE MIN SECONDS
wait_height() {
    local end=$((SECONDS + $3)) h
    while [ $SECONDS -lt $end ]; do
        h=$(height "$1")
        [ -n "$h" ] && [ "$h" -ge "$2" ] && return 0
        sleep 0.5
    done
    return 1
}

bash $NS up "$tmp/tn" >/dev/null || fail "netns-testnet.sh up"
for i in 0 1 2 3 4; do wait_height $i 2 60 || fail "node$i did not reach height 2"; done
echo "up: 5 nodes in namespaces committing (height $(height 0))"

# View-change timeout from the genesis (default 2000 ms): cut for five of them.
vt=$(jq -r '.consensus.view_timeout_ms // 2000' "$tmp/tn/genesis.json")
cut_s=$(( (5 * vt + 999) / 1000 ))
h3=$(height 3)
bash $NS cut 3
h0=$(height 0)
sleep "$cut_s"
h0b=$(height 0)
h3b=$(height 3)
[ -n "$h0b" ] && [ "$h0b" -ge $((h0 + 3)) ] || fail "with v3 cut off, v0 went from $h0 to $h0b"
[ -z "$h3b" ] || fail "v3 still answered while cut off"
echo "cut: v3 off for ${cut_s} s, v0 $h0 -> $h0b"
bash $NS heal 3
target=$(height 0)
wait_height 3 "$target" 60 || fail "healed v3 stuck at $(height 3), v0 was at $target"
echo "heal: v3 caught up to $target (it had $h3)"

if ! bash $NS netem "delay 100ms loss 5%" 2>"$tmp/netem.err"; then
    # Only the kernel's missing queueing discipline is a reason to skip; anything else fails.
    grep -q "qdisc kind is unknown" "$tmp/netem.err" || fail "tc netem: $(cat "$tmp/netem.err")"
    echo "SKIP (part): this kernel has no sch_netem, so the 100 ms delay cannot be emulated"
    if command -v nft >/dev/null && bash $NS loss 5 2>"$tmp/loss.err"; then
        h=$(height 0)
        wait_height 0 $((h + 3)) 60 || fail "with 5% loss (nftables) v0 stayed at $(height 0) from $h"
        wait_height 1 $((h + 3)) 30 || fail "with 5% loss v1 stayed at $(height 1)"
        echo "loss: 5% of packets into every node dropped (nftables): $h -> $(height 0)"
        bash $NS clear
        echo "PASS t_netns (cut and heal, 5% loss)"
    else
        echo "SKIP (part): no nftables either: $(cat "$tmp/loss.err" 2>/dev/null)"
        echo "PASS t_netns (cut and heal)"
    fi
    exit 0
fi
h=$(height 0)
wait_height 0 $((h + 3)) 60 || fail "with 100 ms delay and 5% loss v0 stayed at $(height 0) from $h"
wait_height 1 $((h + 3)) 30 || fail "with delay and loss v1 stayed at $(height 1)"
echo "netem: 100 ms delay, 5% loss: $h -> $(height 0)"
bash $NS clear
echo "PASS t_netns"
