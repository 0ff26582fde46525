#!/usr/bin/python3
"""Where a tx's CPU time goes in a 4-validator cluster (docs/performance.md, "Where a tx's
microseconds go"). Reads `perf script` output of a profile taken by

    TEM_PERF_OUT=/tmp/perf.data PER_SIGNER=64 build/bench/bench_per_tx

(perf record --call-graph dwarf on every node of the cluster while it commits the txs) and puts
each sample into the first stage of STAGES whose functions appear in its stack, then prints a
Markdown table: share of the nodes' CPU, and microseconds per committed tx per node.

    perf script -i /tmp/perf.data -F comm,period,ip,sym | python3 tests/tools/perf_stages.py NTX
"""
import collections
import sys

# (stage, functions any of which in the stack puts a sample there), first match wins.
STAGES = [
    ("secp256k1: admission (mempool, thread pool)", {"verify_work"}),
    ("secp256k1: proposal validation (thread pool)", {"val_work"}),
    ("secp256k1: fetched blocks (catch-up)", {"ledger_block_view_verify", "verify_range"}),
    ("mempool log: write + fdatasync (thread pool)", {"uv__fs_work", "fdatasync"}),
    ("apply: contracts (orders, matching)", {"market_exec_tx", "market_begin_block", "market_end_block"}),
    # smt.c's update recurses once per tree level: deep stacks lose their outer frames
    ("apply: state tree (SMT) into LMDB", {"flush_state", "ledger__smt_update", "update", "node_get"}),
    ("apply: LMDB commit + fsync", {"mdb_txn_commit"}),
    ("apply: other (certificate, receipts, index, bookkeeping)", {"apply_view", "ledger_store_apply_view"}),
    ("consensus: vote record fsync", {"io_persist", "node_votes_put", "ledger_store_meta_put", "record_build"}),
    ("validation: view build + precheck", {"node_validate", "val_finish", "on_val_wait"}),
    ("proposal: select + build", {"on_propose"}),
    ("consensus: messages (Ed25519, digests)", {"host_post", "host_validated", "node_replica_post"}),
    ("HTTP intake: parse, decode, admit, reply", {"h_post_txs", "h_post_tx", "submit_one"}),
    ("gossip in/out (tx batches)", {"flush_gossip", "regossip", "node_mempool_submit"}),
    ("peer frames (decode, dispatch)", {"on_frame"}),
    ("mempool bookkeeping after a block", {"node_mempool_block_applied", "on_sync"}),
]
OTHER = "libuv loop, sockets, kernel I/O, other"


def main():
    ntx = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    tot = collections.Counter()
    stack, period = [], 0

    def flush():
        if not period:
            return
        names = {f.split(" ", 1)[1].replace(" (inlined)", "") for f in stack if " " in f}
        for name, fns in STAGES:
            if names & fns:
                tot[name] += period
                return
        tot[OTHER] += period

    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line.strip():
            flush()
            stack, period = [], 0
        elif not line.startswith((" ", "\t")):
            w = line.split()
            period = int(w[-1]) if w and w[-1].isdigit() else 0
        else:
            stack.append(line.strip())
    flush()
    allp = sum(tot.values())
    if not allp:
        sys.exit("no samples")
    print(f"| stage | share of CPU | µs per tx per node |")
    print("|---|---|---|")
    for name, _ in STAGES + [(OTHER, None)]:
        p = tot[name]
        us = p / 1e3 / ntx / 4 if ntx else 0
        print(f"| {name} | {100 * p / allp:.1f}% | {us:.1f} |")
    print(f"| **all** (CPU {allp / 1e9:.2f} s over 4 nodes) | 100% | {allp / 1e3 / ntx / 4 if ntx else 0:.1f} |")


if __name__ == "__main__":
    main()
