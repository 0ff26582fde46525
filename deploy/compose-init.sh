#!/bin/bash
# tem-compose-init: the one-shot `init` service of deploy/docker-compose.yml. Generates a testnet
# (temctl testnet gen) for the compose network's fixed addresses, then hands each validator only
# its own key and config (its own volume), the genesis and feeder install tx to /genesis, and the
# prosumers' trading and meter keys to the simulator's volume. Does nothing if
# /genesis/genesis.json exists, so restarting the stack keeps its chain.
set -euo pipefail
if [ -f /genesis/genesis.json ]; then
    echo "tem-compose-init: /genesis/genesis.json exists; keeping the existing testnet"
    exit 0
fi
work=$(mktemp -d)
temctl testnet gen --dir "$work/tn" --hosts "${TEM_HOSTS:?}" --prosumers "${TEM_PROSUMERS:-32}" \
    --slot-seconds "${TEM_SLOT_SECONDS:-3}" --mechanism "${TEM_MECHANISM:-cda}" \
    --feeder /usr/share/tem/feeders/case33bw --quiet
# Validators admit only listed observers: the testnet's one.
obs_pub=$(sed -n 's/.*"public" *: *"\([0-9a-f]*\)".*/\1/p' "$work/tn/keys/observer.key")
for i in 0 1 2 3 4; do
    if [ "$i" = 4 ]; then key=observer.key; out=/keys/observer; obs=true; else key=v$i.key; out=/keys/v$i; obs=false; fi
    install -m 0600 "$work/tn/keys/$key" "$out/node.key"
    cat >"$out/temd.conf" <<CONF
[node]
data_dir = /var/lib/tem
genesis = /genesis/genesis.json
key = $out/node.key
listen = 0.0.0.0:26600
http = 0.0.0.0:26700
observer = $obs
log_level = info
observer_key = $obs_pub
CONF
done
install -m 0644 "$work/tn/genesis.json" /genesis/genesis.json.tmp
install -m 0644 "$work/tn/feeder-install.tx" /genesis/feeder-install.tx
install -m 0600 "$work/tn/keys"/p*.key "$work/tn/keys"/m*.key /sim/  # trading and meter keys
mv /genesis/genesis.json.tmp /genesis/genesis.json
rm -rf "$work"
echo "tem-compose-init: testnet written"
