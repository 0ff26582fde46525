#!/usr/bin/python3
"""Writes the seed inputs of fuzz_dispatch (tests/fuzz/fuzz_dispatch.c): byte 0 picks the
sender (bits 0-1) and asks the harness to sign the PbftMessage as validator 1 (bit 2); the rest
is a NodeMessage. Protobuf is encoded by hand so the seeds need nothing but python3."""
import os, sys

def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7f
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)

def field(num, wt, payload):
    tag = varint(num << 3 | wt)
    if wt == 0:
        return tag + varint(payload)
    return tag + varint(len(payload)) + payload

H = bytes(range(32))
def vote(view, height, h=H):
    return field(1, 0, view) + field(2, 0, height) + field(3, 2, h)
def pbft(kind, body, sender=1):
    return field(1, 0, sender) + field(2, 2, b'\0' * 64) + field(kind, 2, body)
def node_pbft(p):
    return field(1, 2, p)

seeds = {
    'prepare-signed': bytes([4]) + node_pbft(pbft(11, vote(0, 1))),
    'commit-signed': bytes([4]) + node_pbft(pbft(12, vote(0, 1))),
    'preprepare-signed': bytes([4]) + node_pbft(pbft(10, vote(1, 1) + field(4, 2, b'\x0a\x00'))),
    'checkpoint-signed': bytes([4]) + node_pbft(pbft(13, field(1, 0, 16) + field(2, 2, H))),
    'viewchange-signed': bytes([4]) + node_pbft(pbft(14, field(1, 0, 1) + field(2, 0, 0))),
    'newview-signed': bytes([4]) + node_pbft(pbft(15, field(1, 0, 1) + field(2, 2, b'\x08\x01'))),
    'prepare-unsigned-v2': bytes([1]) + node_pbft(pbft(11, vote(0, 1), sender=2)),
    'txbatch': bytes([0]) + field(2, 2, field(1, 2, b'\x0a\x03abc') + field(1, 2, b'')),
    'block-request-validator': bytes([0]) + field(3, 2, field(1, 0, 1) + field(2, 0, 64)),
    'block-request-observer': bytes([3]) + field(3, 2, field(1, 0, 0) + field(2, 0, 1000)),
    'block-batch': bytes([2]) + field(4, 2, field(1, 2, field(1, 0, 1) + field(2, 2, b'\x0a\x00') + field(3, 2, b'\x08\x01')) + field(2, 0, 5)),
    'garbage': bytes([0, 0xff, 0xff, 0xff]),
    # bit 3: the follower (a validator on an empty data dir, syncing before it votes)
    'follower-tip-v1': bytes([8]) + field(4, 2, field(2, 0, 3)),
    'follower-tip-v2': bytes([9]) + field(4, 2, field(2, 0, 0)),
    'follower-block-batch': bytes([10]) + field(4, 2, field(1, 2, field(1, 0, 1) + field(2, 2, b'\x0a\x02\x08\x01') + field(3, 2, b'\x08\x01\x10\x01')) + field(2, 0, 1)),
    'follower-prepare-signed': bytes([12]) + node_pbft(pbft(11, vote(0, 1))),
}
d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), 'fuzz_dispatch')
os.makedirs(d, exist_ok=True)
for k, v in seeds.items():
    with open(os.path.join(d, k), 'wb') as f:
        f.write(v)
