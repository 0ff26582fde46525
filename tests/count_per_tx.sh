#!/usr/bin/env bash
# Per-tx work of temd (docs/performance.md, "Per-tx work: unpacks, hashes, copies"): starts 4
# validators on 127.0.0.1 under the LD_PRELOAD counter tests/tools/tem_count.c, submits N
# transfers round-robin to the 4 nodes, waits until every one is committed on every node, stops
# the nodes with SIGTERM (the counter writes its file at exit) and prints per node and per tx:
# secp256k1 and Ed25519 verifications, protobuf unpacks by message type, SHA-256 calls by kind,
# copies of tx bytes and mallocs. One tx at a time makes nearly one block per tx, so per-block
# work dominates the totals: build/bench/bench_per_tx measures per-tx totals under load.
#   N=120 bash tests/count_per_tx.sh
# Not part of `make test` (it measures, it asserts nothing but that the txs commit). Every process
# is started here, tracked by pid and killed on exit; every wait is bounded.
set -euo pipefail
B=${BUILD:-build}
N=${N:-120}
T="$B/temctl"
D="$B/temd"
make -s "$B/tools/tem_count.so" BUILD="$B" >/dev/null
LIB="$(cd "$B/tools" && pwd)/tem_count.so"
command -v curl >/dev/null && command -v jq >/dev/null || { echo "count_per_tx: FAIL: curl or jq missing (make deps installs it)"; exit 1; }
dir=$(mktemp -d /tmp/tem-count-XXXXXX)
declare -A PID=()
cleanup() {
  for k in "${!PID[@]}"; do kill -TERM "${PID[$k]}" 2>/dev/null || true; done
  sleep 0.5
  for k in "${!PID[@]}"; do kill -KILL "${PID[$k]}" 2>/dev/null || true; done
  if [ "${KEEP:-}" = 1 ]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$dir"/*.log; do echo "--- $f"; tail -n 20 "$f"; done; exit 1; }

base=$((23000 + ($$ % 400) * 20))
peer() { echo "127.0.0.1:$((base + $1))"; }
http() { echo "127.0.0.1:$((base + 10 + $1))"; }
for i in 0 1 2 3; do "$T" keygen --type validator --out "$dir/v$i.key" >/dev/null; done
for k in admin p1 p2 p3 p4 p5 p6; do "$T" keygen --type meter --out "$dir/$k.key" >/dev/null; done
args=()
for i in 0 1 2 3; do args+=(--validator "v$i:$dir/v$i.key:$(peer $i)@$(http $i)"); done
bus=2
for k in p1 p2 p3 p4 p5 p6; do args+=(--participant "$dir/$k.key:$bus:prosumer:100000000000"); bus=$((bus+1)); done
"$T" genesis --chain-id tem-count --time-ms $(( $(date +%s) * 1000 )) "${args[@]}" --admin "$dir/admin.key" \
  --tariff 0:300000:80000 --slot-ms 60000 --out "$dir/g.json" 2>/dev/null
for i in 0 1 2 3; do
  TEM_COUNT_OUT="$dir/count.n$i" LD_PRELOAD="$LIB" "$D" --data-dir "$dir/n$i" --genesis "$dir/g.json" \
    --key "$dir/v$i.key" --log-level info 2>>"$dir/n$i.log" &
  PID[n$i]=$!
done
height() { curl -s -m 2 "http://$(http "$1")/v1/status" | jq -r .height 2>/dev/null || echo 0; }
wait_height() { local end=$((SECONDS + $3)); while [ $SECONDS -lt $end ]; do [ "$(height "$1")" -ge "$2" ] && return 0; sleep 0.2; done; return 1; }
for i in 0 1 2 3; do wait_height $i 1 30 || fail "node $i did not start"; done

# N transfers: signer p(k), nonces 0.. in order, each sent to the next node round robin.
ids=()
for t in $(seq 0 $((N - 1))); do
  k=$(( t % 6 + 1 )); nonce=$(( t / 6 )); node=$(( t % 4 )); to=$(( k % 6 + 1 ))
  id=$("$T" submit --node "http://$(http $node)" --key "$dir/p$k.key" --chain-id tem-count --nonce $nonce \
       transfer --to "$(jq -r .public "$dir/p$to.key")" --amount $((1000 + t))) || fail "submit $t refused"
  ids+=("$id")
done
committed() { # node txid
  local s; s=$(curl -s -m 2 "http://$(http "$1")/v1/tx/$2" | jq -r .status 2>/dev/null || true)
  [ "$s" = committed ]
}
end=$((SECONDS + 60))
for id in "${ids[@]}"; do
  for i in 0 1 2 3; do
    until committed $i "$id"; do [ $SECONDS -lt $end ] || fail "tx $id not committed on node $i"; sleep 0.2; done
  done
done
heights=$(for i in 0 1 2 3; do height $i; done | tr '\n' ' ')
for i in 0 1 2 3; do kill -TERM "${PID[n$i]}"; done
for i in 0 1 2 3; do wait "${PID[n$i]}" 2>/dev/null || true; unset "PID[n$i]"; done
echo "count_per_tx: $N transfers committed on 4 validators (heights $heights)"
python3 - "$dir" "$N" <<'PY'
import glob, os, sys, collections
d, n = sys.argv[1], int(sys.argv[2])
rows = []
for i in range(4):
    files = glob.glob(f"{d}/count.n{i}.*")
    if not files: sys.exit(f"no counter file for node {i}")
    un, sh, hist, lens = collections.Counter(), collections.Counter(), collections.Counter(), set()
    ver, al = collections.Counter(), collections.Counter()
    for f in files:
        for line in open(f):
            w = line.split()
            if w[0] == "unpack": un[w[1]] += int(w[2])
            elif w[0] == "sha256": sh[w[1]] += int(w[2])
            elif w[0] == "copy": hist[int(w[1])] += int(w[2])
            elif w[0] == "verify": ver[w[1]] += int(w[2])
            elif w[0] == "alloc": al[w[1]] += int(w[2])
            elif w[0] in ("signed_len", "body_len"): lens.add(int(w[1]))
    copies = sum(hist[l] for l in lens)
    rows.append((i, un, sh, copies, ver, al))
def per(x): return f"{x / n:.2f}"
tx_kinds = ["txid", "mempool_log", "sigcache_key", "receipt", "other"]
print(f"\nper tx per node (N={n}):")
print("| node | secp256k1 verifies | Ed25519 verifies | SignedTx unpacks | TxBody unpacks | unpacks | all unpacks | SHA-256 " + " | ".join(tx_kinds) + " | SHA-256 total (tx) | SHA-256 all | tx copies | mallocs (malloc+calloc) | reallocs |")
print("|---" * (12 + len(tx_kinds)) + "|")
tot = collections.Counter()
for i, un, sh, copies, ver, al in rows:
    s, b = un["tem.v1.SignedTx"], un["tem.v1.TxBody"]
    txh = sum(sh[k] for k in tx_kinds)
    allun, allsh, mall = sum(un.values()), sum(sh.values()), al["malloc"] + al["calloc"]
    tot.update({"secp": ver["secp256k1"], "ed": ver["ed25519"], "unpack": allun, "txunpack": s + b, "sha": allsh,
                "txsha": txh, "malloc": mall})
    print(f"| n{i} | {per(ver['secp256k1'])} | {per(ver['ed25519'])} | {per(s)} | {per(b)} | {per(s + b)} | {per(allun)} | "
          + " | ".join(per(sh[k]) for k in tx_kinds) + f" | {per(txh)} | {per(allsh)} | {per(copies)} | {per(mall)} | {per(al['realloc'])} |")
print("\nper node totals (not per tx): unpacks by type; SHA-256 by kind")
for i, un, sh, copies, ver, al in rows:
    print(f"n{i}: " + ", ".join(f"{k.replace('tem.v1.','')}={v}" for k, v in sorted(un.items())))
    print(f"    " + ", ".join(f"{k}={v}" for k, v in sorted(sh.items()) if v))
    print(f"    verify secp256k1={ver['secp256k1']} ed25519={ver['ed25519']}; alloc " + ", ".join(f"{k}={v}" for k, v in sorted(al.items())))
c = {k: v / n for k, v in tot.items()}
print(f"\ncluster per committed tx (4 nodes): secp256k1 verifies {c['secp']:.2f}, Ed25519 verifies {c['ed']:.2f}, "
      f"unpacks {c['unpack']:.1f} (SignedTx+TxBody {c['txunpack']:.2f}), SHA-256 {c['sha']:.1f} (of tx bytes {c['txsha']:.2f}), "
      f"mallocs {c['malloc']:.0f}")
if os.environ.get("BENCH_LINES") == "1":
    # bench lines (tests/bench/bench_per_tx.c): per committed tx, cluster-wide or per node, each
    # beside the target of issue #15 (verifications) or #11 (unpacks, hashes of the tx's bytes:
    # 2 per node). mallocs have no target: the limit printed is the per-node unpack count x 10.
    def line(name, v, unit, lim, lunit, ratio): print(f"bench {name} {v:.2f} {unit} limit {lim:.2f} {lunit} ratio {ratio:.3f}")
    line("per_tx_secp_verifies_cluster", c["secp"], "count", 4.1, "count", 4.1 / c["secp"] if c["secp"] else 0)
    line("per_tx_unpacks_per_node", c["txunpack"] / 4, "count", 2.0, "count", 2.0 / (c["txunpack"] / 4) if c["txunpack"] else 0)
    line("per_tx_sha256_tx_bytes_per_node", c["txsha"] / 4, "count", 2.0, "count", 2.0 / (c["txsha"] / 4) if c["txsha"] else 0)
    line("per_tx_sha256_all_per_node", c["sha"] / 4, "count", c["txsha"] / 4, "count_of_tx_bytes", (c["txsha"] / c["sha"]) if c["sha"] else 0)
    line("per_tx_mallocs_per_node", c["malloc"] / 4, "count", c["unpack"] / 4, "unpacks", (c["unpack"] / c["malloc"]) if c["malloc"] else 0)
PY
