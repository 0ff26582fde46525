#!/usr/bin/env python3
"""harden_peer.py: a hostile peer for the t_harden*.sh scenario tests (issue #12).

Speaks the peer protocol of docs/net.md (section 3) as an initiator with its own Ed25519 key:
X25519 ephemerals, Ed25519 transcript signatures, HKDF-SHA256 keys, ChaCha20-Poly1305 frames.
Uses python3-cryptography (Debian package).

  harden_peer.py HOST:PORT GENESIS_HASH_HEX KEYFILE MODE [ARGS...]

MODE
  hello                 handshake, print "admitted" or "refused: why", exit 0 / 3
  sigpipe N             N times: handshake, send 64 block requests, close without reading
  noread SECONDS        handshake, then send a block request every 2 ms for SECONDS, never read
  partial N SECONDS     N connections: handshake, send a frame header claiming 16 MiB and
                        1 KiB of it, then hold them open SECONDS
  halfopen N SECONDS    N TCP connections that never send a byte, held SECONDS
  chunkflood SECONDS H  handshake, then ask for a state sync chunk of height H every 1 ms
                        for SECONDS, never reading (t_state_sync.sh)
  garbage SECONDS       handshake, then send well-sealed frames whose content is no
                        NodeMessage (ff ff ff ff) as fast as it can for SECONDS; prints
                        "garbage: sent N"
"""
import hashlib
import hmac
import json
import socket
import struct
import sys
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives import serialization


def H(*parts):
    d = hashlib.sha256()
    for p in parts:
        d.update(p)
    return d.digest()


def hkdf(salt, ikm, label):
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, label + b"\x01", hashlib.sha256).digest()


def nonce(ctr):
    return b"\0" * 4 + struct.pack("<Q", ctr)


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed by the node")
        b += c
    return b


def recv_frame(s):
    n = struct.unpack(">I", recv_exact(s, 4))[0]
    return recv_exact(s, n)


class Session:
    def __init__(self, sock, tx, rx):
        self.s, self.tx, self.rx, self.txc, self.rxc = sock, ChaCha20Poly1305(tx), ChaCha20Poly1305(rx), 0, 0

    def seal(self, pt):
        hdr = struct.pack(">I", len(pt) + 16)
        ct = self.tx.encrypt(nonce(self.txc), pt, hdr)
        self.txc += 1
        return hdr + ct

    def send(self, pt):
        self.s.sendall(self.seal(pt))

    def open(self, ct):
        hdr = struct.pack(">I", len(ct))
        pt = self.rx.decrypt(nonce(self.rxc), ct, hdr)
        self.rxc += 1
        return pt


def handshake(addr, ghash, sk):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    h = H(b"TEM/net/v1", ghash)
    e = X25519PrivateKey.generate()
    e_pub = e.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    m1 = b"TEM1\x01" + e_pub
    s.sendall(struct.pack(">I", len(m1)) + m1)
    h = H(h, e_pub)
    m2 = recv_frame(s)
    if len(m2) != 144:
        raise EOFError("bad M2 length %d" % len(m2))
    e_r = m2[:32]
    dh = e.exchange(X25519PublicKey.from_public_bytes(e_r))
    h1 = H(h, e_r)
    k2 = hkdf(h1, dh, b"TEM/net/v1 hs r2i")
    pt = ChaCha20Poly1305(k2).decrypt(nonce(0), m2[32:], h1)
    h = H(h1, pt)
    pk = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    sig = sk.sign(b"TEM/net/v1/initiator" + h)
    k3 = hkdf(h, dh, b"TEM/net/v1 hs i2r")
    m3 = ChaCha20Poly1305(k3).encrypt(nonce(0), pk + sig, h)
    s.sendall(struct.pack(">I", len(m3)) + m3)
    h = H(h, pk + sig)
    sess = Session(s, hkdf(h, dh, b"TEM/net/v1 data i2r"), hkdf(h, dh, b"TEM/net/v1 data r2i"))
    admit = recv_frame(s)  # EOFError when refused
    sess.open(admit)
    return sess


def block_request(from_h=1, maxb=64):
    br = b"\x08" + varint(from_h) + b"\x10" + varint(maxb)
    return b"\x1a" + varint(len(br)) + br


def chunk_request(height, index):
    cr = b"\x08" + varint(height) + b"\x10" + varint(index)
    return b"\x3a" + varint(len(cr)) + cr  # NodeMessage.chunk_request = 7


def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def flood(sess, secs, mode, what, payloads, pause):
    """Sends payloads(sent so far) for secs, pausing between rounds; a send that times out is
    the node's back-pressure and is retried. Returns the count sent, or None (after printing
    why) when the node closed the session."""
    end = time.time() + secs
    sent = 0
    sess.s.settimeout(1.0)
    while time.time() < end:
        try:
            for p in payloads(sent):
                sess.send(p)
                sent += 1
        except socket.timeout:
            pass  # the node stopped reading us: back-pressure works
        except OSError as ex:
            print("%s: node closed us after %d %s: %s" % (mode, sent, what, ex))
            return None
        if pause:
            time.sleep(pause)
    return sent


def main():
    addr, ghex, keyfile, mode = sys.argv[1:5]
    args = sys.argv[5:]
    ghash = bytes.fromhex(ghex)
    secret = bytes.fromhex(json.load(open(keyfile))["secret"])
    sk = Ed25519PrivateKey.from_private_bytes(secret[:32])
    if mode == "hello":
        try:
            sess = handshake(addr, ghash, sk)
        except Exception as ex:  # refused: the node closes before ADMIT
            print("refused: %s" % ex)
            sys.exit(3)
        print("admitted")
        sess.s.close()
        return
    if mode == "sigpipe":
        for i in range(int(args[0])):
            try:
                sess = handshake(addr, ghash, sk)
            except (OSError, EOFError) as ex:
                print("sigpipe: connection %d failed: %s" % (i, ex))
                sys.exit(4)
            for _ in range(64):
                sess.send(block_request())
            # Unread data in our receive buffer makes close() send a RST: the node's next
            # write to this socket fails with EPIPE.
            sess.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sess.s.close()
        print("sigpipe: done")
        return
    if mode == "noread":
        sess = handshake(addr, ghash, sk)
        sess.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sent = flood(sess, float(args[0]), "noread", "requests", lambda k: [block_request()], 0.002)
        if sent is not None:
            print("noread: sent %d requests, still connected" % sent)
        return
    if mode == "garbage":
        sess = handshake(addr, ghash, sk)
        # wire type 7 in its first key: never decodes
        sent = flood(sess, float(args[0]), "garbage", "frames", lambda k: [b"\xff\xff\xff\xff"] * 100, 0)
        if sent is not None:
            print("garbage: sent %d" % sent)
        return
    if mode == "chunkflood":
        sess = handshake(addr, ghash, sk)
        sess.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        height = int(args[1])
        sent = flood(sess, float(args[0]), "chunkflood", "requests", lambda k: [chunk_request(height, k % 256)], 0.001)
        if sent is not None:
            print("chunkflood: sent %d requests, still connected" % sent)
        return
    if mode == "partial":
        n, secs = int(args[0]), float(args[1])
        socks = []
        for _ in range(n):
            sess = handshake(addr, ghash, sk)
            sess.s.sendall(struct.pack(">I", 16 << 20) + b"\0" * 1024)
            socks.append(sess.s)
        time.sleep(secs)
        alive = 0
        for s in socks:
            s.setblocking(False)
            try:
                alive += s.recv(1) != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        print("partial: %d of %d still open after %.0fs" % (alive, n, secs))
        return
    if mode == "halfopen":
        n, secs = int(args[0]), float(args[1])
        host, port = addr.rsplit(":", 1)
        socks = []
        for _ in range(n):
            try:
                socks.append(socket.create_connection((host, int(port)), timeout=5))
            except OSError:
                break
        print("halfopen: %d connections" % len(socks), flush=True)
        time.sleep(secs)
        return
    sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
