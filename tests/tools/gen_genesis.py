#!/usr/bin/env python3
"""gen_genesis.py: a genesis JSON with many participants, for scale measurements
(docs/performance.md, "State root and scale").

  gen_genesis.py --participants 1000000 --validator NAME:KEYFILE:PEER@HTTP [...] --out g.json

Participant i gets the public key 02 || SHA-256("tem-scale" || u32le(i)) (the right shape for a
compressed secp256k1 key; nobody holds its secret, so these accounts never sign), bus 1 + i % 500,
role prosumer and 1,000,000 micro-units. Streamed, so 1M participants need little memory."""
import argparse
import hashlib
import json
import struct
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--participants", type=int, required=True)
    ap.add_argument("--validator", action="append", required=True,
                    help="NAME:KEYFILE:PEER_ADDR@HTTP_ADDR")
    ap.add_argument("--chain-id", default="tem-scale")
    ap.add_argument("--time-ms", type=int, default=1767225600000)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    vals = []
    for v in a.validator:
        name, keyfile, addrs = v.split(":", 2)
        peer, http = addrs.split("@", 1)
        with open(keyfile) as f:
            pub = json.load(f)["public"]
        vals.append({"name": name, "pubkey": pub, "address": peer, "http": http})
    with open(a.out, "w") as out:
        out.write('{"chain_id":%s,"genesis_time_ms":%d,"validators":%s,"participants":[' %
                  (json.dumps(a.chain_id), a.time_ms, json.dumps(vals, separators=(",", ":"))))
        for i in range(a.participants):
            pk = "02" + hashlib.sha256(b"tem-scale" + struct.pack("<I", i)).hexdigest()
            out.write('%s{"pubkey":"%s","bus":%d,"role":"prosumer","money_uunit":1000000}' %
                      ("," if i else "", pk, 1 + i % 500))
        out.write('],"tariffs":[{"start_minute":0,"retail_uunit_per_kwh":300000,'
                  '"feed_in_uunit_per_kwh":80000}]}\n')
    return 0


if __name__ == "__main__":
    sys.exit(main())
