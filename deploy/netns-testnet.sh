#!/bin/bash
# netns-testnet.sh: the 4-validator + observer testnet with each node in its own network
# namespace, on its own address on one bridge, so tests can cut a node off, add delay and loss
# to its links, and heal it: the same topology as docker-compose.yml without containers.
# Needs root and iproute2 (ip, tc). docs/operate.md, "Network namespaces".
#
#   netns-testnet.sh up DIR [testnet gen options]   network, genesis and configs in DIR, start nodes
#   netns-testnet.sh down DIR                       stop the nodes (by pid), remove namespaces, bridge
#   netns-testnet.sh cut I                          node I's link down (I = 0..3 validators, 4 observer)
#   netns-testnet.sh heal I                         node I's link up again
#   netns-testnet.sh netem "delay 100ms loss 5%"    netem on every link (traffic into each node)
#   netns-testnet.sh loss PCT                       drop PCT% of the TCP packets into each node with
#                                                   nftables (for kernels without sch_netem)
#   netns-testnet.sh clear                          remove netem and loss from every link
#   netns-testnet.sh status                         each node's /v1/status
#   netns-testnet.sh addr I                         node I's address
#
# Environment: BUILD (build), TEM_NETNS_PREFIX (temns; names its namespaces and links),
# TEM_NETNS_SUBNET (10.77.0: nodes are .10-.14, the bridge .1), TEM_BASE_PORT (26600).
set -euo pipefail
BUILD=${BUILD:-build}
PREFIX=${TEM_NETNS_PREFIX:-temns}
SUBNET=${TEM_NETNS_SUBNET:-10.77.0}
PORT=${TEM_BASE_PORT:-26600}
NODES=5
BR=${PREFIX}-br

ns() { echo "${PREFIX}-n$1"; }
hostif() { echo "${PREFIX}-h$1"; }
addr() { echo "$SUBNET.$((10 + $1))"; }
die() { echo "netns-testnet: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"; }

net_up() {
    ip link add "$BR" type bridge
    ip addr add "$SUBNET.1/24" dev "$BR"
    ip link set "$BR" up
    for i in $(seq 0 $((NODES - 1))); do
        local n; n=$(ns "$i")
        ip netns add "$n"
        ip link add "$(hostif "$i")" type veth peer name "${PREFIX}-e$i"
        ip link set "${PREFIX}-e$i" netns "$n"
        ip -n "$n" link set "${PREFIX}-e$i" name eth0
        ip -n "$n" addr add "$(addr "$i")/24" dev eth0
        ip -n "$n" link set eth0 up
        ip -n "$n" link set lo up
        ip link set "$(hostif "$i")" master "$BR"
        ip link set "$(hostif "$i")" up
    done
}

net_down() {
    for i in $(seq 0 $((NODES - 1))); do
        ip link del "$(hostif "$i")" 2>/dev/null || true
        ip netns del "$(ns "$i")" 2>/dev/null || true
    done
    ip link del "$BR" 2>/dev/null || true
}

stop_nodes() {
    local dir=$1 pids=()
    for f in "$dir"/node*.pid; do
        [ -f "$f" ] || continue
        pids+=("$(cat "$f")")
        rm -f "$f"
    done
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
}

cmd=${1:-}
case "$cmd" in
up)
    need_root
    dir=${2:?usage: up DIR [gen options]}
    shift 2
    hosts=$(for i in $(seq 0 $((NODES - 1))); do printf '%s,' "$(addr "$i")"; done)
    net_up
    "$BUILD/temctl" testnet gen --dir "$dir" --hosts "${hosts%,}" --base-port "$PORT" --quiet "$@" 2>/dev/null ||
        { net_down; die "temctl testnet gen failed"; }
    dir=$(cd "$dir" && pwd)
    for i in $(seq 0 $((NODES - 1))); do
        ip netns exec "$(ns "$i")" "$BUILD/temd" --config "$dir/node$i.conf" >>"$dir/node$i/temd.log" 2>&1 &
        echo $! >"$dir/node$i.pid"
    done
    echo "netns-testnet: up: nodes at $(addr 0)..$(addr $((NODES - 1))), HTTP port $((PORT + 100)), dir $dir"
    ;;
down)
    need_root
    [ -n "${2:-}" ] && stop_nodes "$2"
    net_down
    ;;
cut) need_root; ip link set "$(hostif "${2:?node}")" down ;;
heal) need_root; ip link set "$(hostif "${2:?node}")" up ;;
netem)
    need_root
    args=${2:?usage: netem \"delay 100ms loss 5%\"}
    # shellcheck disable=SC2086
    for i in $(seq 0 $((NODES - 1))); do tc qdisc replace dev "$(hostif "$i")" root netem $args; done
    ;;
loss)
    need_root
    pct=${2:?usage: loss PCT}
    command -v nft >/dev/null || die "loss needs nftables (nft)"
    for i in $(seq 0 $((NODES - 1))); do
        ip netns exec "$(ns "$i")" nft add table inet temloss
        ip netns exec "$(ns "$i")" nft "add chain inet temloss input { type filter hook input priority 0; }"
        ip netns exec "$(ns "$i")" nft "add rule inet temloss input meta l4proto tcp numgen random mod 100 < $pct drop"
    done
    ;;
clear)
    need_root
    for i in $(seq 0 $((NODES - 1))); do
        tc qdisc del dev "$(hostif "$i")" root 2>/dev/null || true
        ip netns exec "$(ns "$i")" nft delete table inet temloss 2>/dev/null || true
    done
    ;;
status)
    for i in $(seq 0 $((NODES - 1))); do
        printf 'node%d %s ' "$i" "$(addr "$i")"
        curl -s --max-time 3 "http://$(addr "$i"):$((PORT + 100))/v1/status" || printf 'no answer'
        echo
    done
    ;;
addr) addr "${2:?node}" ;;
*)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    [ "$cmd" = help ] || [ "$cmd" = --help ] || exit 2
    ;;
esac
