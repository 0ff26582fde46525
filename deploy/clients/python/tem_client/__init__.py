"""tem_client: a Python client for a TEM ledger node, on Debian 12's python3 modules only
(python3-ecdsa for secp256k1 with RFC 6979 nonces, python3-cryptography for Ed25519, the
standard library for HTTP and JSON).

What it does, each step as docs/ledger.md and docs/api.md specify it:
  * keys: read and write the key-file format (docs/ledger.md "Key files");
  * transactions: encode a TxBody (protobuf, written by hand: a few varints and byte strings),
    sign it by the documented rule (SHA-256 of the body, compact r||s, low-S), wrap a SignedTx;
  * submit, wait for a receipt, read status, accounts, blocks, the genesis;
  * follow GET /v1/events (Server-Sent Events), resuming with Last-Event-ID after a drop;
  * verify: Merkle roots (docs/ledger.md section 2), block hashes and commit certificates
    against the genesis validators (section 3). Account proofs (GET /v1/accounts/{key}/proof)
    plug in at verify_account_proof once the node serves them: the Merkle path check and the
    certificate check it needs are here already.
"""
import hashlib
import json
import os
import struct
import time
import urllib.error
import urllib.request

import ecdsa
from ecdsa.util import sigencode_string_canonize

__all__ = ["Key", "TxBody", "sign_body", "signed_tx", "Node", "NodeError", "merkle_root",
           "merkle_verify", "block_hash", "commit_digest", "verify_block", "verify_account_proof"]

SECP256K1_N = ecdsa.SECP256k1.order


# ---------------------------------------------------------------- keys
class Key:
    """A participant's (meter) key: secp256k1 secret and 33-byte compressed public key."""

    def __init__(self, secret: bytes):
        if len(secret) != 32:
            raise ValueError("secp256k1 secret must be 32 bytes")
        self._sk = ecdsa.SigningKey.from_string(secret, curve=ecdsa.SECP256k1)
        self.secret = secret
        self.public = self._sk.get_verifying_key().to_string("compressed")

    @classmethod
    def load(cls, path: str) -> "Key":
        """Reads a key file: one JSON line {"type":"meter","secret":hex,"public":hex}. The public
        key is derived from the secret; a file whose `public` disagrees is refused."""
        with open(path, "r", encoding="ascii") as f:
            doc = json.load(f)
        if doc.get("type") != "meter":
            raise ValueError("%s: not a meter (secp256k1) key file" % path)
        k = cls(bytes.fromhex(doc["secret"]))
        if "public" in doc and bytes.fromhex(doc["public"]) != k.public:
            raise ValueError("%s: public key does not match the secret" % path)
        return k

    @classmethod
    def generate(cls) -> "Key":
        return cls(ecdsa.SigningKey.generate(curve=ecdsa.SECP256k1).to_string())

    def save(self, path: str) -> None:
        """Writes the key file with mode 0600 from creation, never over an existing file."""
        line = json.dumps({"type": "meter", "secret": self.secret.hex(), "public": self.public.hex()},
                          separators=(",", ":")) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def sign_digest(self, digest: bytes) -> bytes:
        """ECDSA of a 32-byte digest (not hashed again), RFC 6979 nonce, compact r||s, low-S."""
        sig = self._sk.sign_digest_deterministic(digest, hashfunc=hashlib.sha256,
                                                 sigencode=sigencode_string_canonize)
        assert int.from_bytes(sig[32:], "big") <= SECP256K1_N // 2
        return sig


# ---------------------------------------------------------------- protobuf (proto/tem.proto)
def _varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _uint(field: int, v: int) -> bytes:
    # proto3: a field equal to its default is not written
    return b"" if v == 0 else _varint(field << 3) + _varint(v)


def _bytes(field: int, b: bytes) -> bytes:
    return b"" if len(b) == 0 else _varint(field << 3 | 2) + _varint(len(b)) + b


def _msg(field: int, b: bytes) -> bytes:
    # a set oneof member is written even when empty
    return _varint(field << 3 | 2) + _varint(len(b)) + b


SIDES = {"buy": 1, "sell": 2}
ROLES = {"prosumer": 1, "consumer": 2, "utility": 3, "dso": 4, "aggregator": 5}


class TxBody:
    """Builders for the TxBody kinds a participant or admin signs. Each returns the body bytes."""

    @staticmethod
    def _head(chain_id: str, signer: bytes, nonce: int) -> bytes:
        return _bytes(1, chain_id.encode()) + _bytes(2, signer) + _uint(3, nonce)

    @classmethod
    def order(cls, chain_id, signer, nonce, slot, side, price, quantity_wh, tif="gtc"):
        o = _uint(1, slot) + _uint(2, SIDES[side]) + _uint(3, price) + _uint(4, quantity_wh) + \
            _uint(5, {"gtc": 0, "ioc": 1}[tif])
        return cls._head(chain_id, signer, nonce) + _msg(10, o)

    @classmethod
    def cancel(cls, chain_id, signer, nonce, order_txid: bytes):
        return cls._head(chain_id, signer, nonce) + _msg(11, _bytes(1, order_txid))

    @classmethod
    def reading(cls, chain_id, signer, nonce, slot, import_wh, export_wh):
        r = _uint(1, slot) + _uint(2, import_wh) + _uint(3, export_wh)
        return cls._head(chain_id, signer, nonce) + _msg(12, r)

    @classmethod
    def transfer(cls, chain_id, signer, nonce, to: bytes, amount):
        return cls._head(chain_id, signer, nonce) + _msg(13, _bytes(1, to) + _uint(2, amount))

    @classmethod
    def register(cls, chain_id, signer, nonce, pubkey: bytes, bus, role):
        return cls._head(chain_id, signer, nonce) + _msg(20, _bytes(1, pubkey) + _uint(2, bus) +
                                                         _uint(3, ROLES[role]))

    @classmethod
    def deposit(cls, chain_id, signer, nonce, to: bytes, amount):
        return cls._head(chain_id, signer, nonce) + _msg(23, _bytes(1, to) + _uint(2, amount))


def sign_body(key: Key, body: bytes):
    """The signing rule: txid = digest = SHA-256(body); sig = ECDSA(digest). Returns (txid, sig)."""
    digest = hashlib.sha256(body).digest()
    return digest, key.sign_digest(digest)


def signed_tx(body: bytes, sig: bytes) -> bytes:
    """SignedTx {body = 1; sig = 2}."""
    return _bytes(1, body) + _bytes(2, sig)


# ---------------------------------------------------------------- the node's HTTP API
class NodeError(Exception):
    def __init__(self, status, code, message):
        super().__init__("%s %s: %s" % (status, code, message))
        self.status, self.code, self.message = status, code, message


class Node:
    def __init__(self, url: str, timeout: float = 5.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _req(self, method, path, body=None, ctype=None):
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if ctype:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {"code": "EHTTP", "error": raw.decode(errors="replace")}
            raise NodeError(e.code, doc.get("code"), doc.get("error")) from None

    def get(self, path):
        return json.loads(self._req("GET", path)[1])

    def status(self):
        return self.get("/v1/status")

    def genesis(self):
        """{"hash","bytes","genesis"}; the hash is checked against the exact bytes served."""
        raw = self._req("GET", "/v1/genesis?format=raw")[1]
        doc = self.get("/v1/genesis")
        if hashlib.sha256(raw).hexdigest() != doc["hash"]:
            raise ValueError("genesis bytes do not hash to the advertised hash")
        return doc

    def account(self, pubkey: bytes):
        return self.get("/v1/accounts/" + pubkey.hex())

    def block(self, height: int):
        return self.get("/v1/blocks/%d" % height)

    def tx(self, txid: bytes):
        return self.get("/v1/tx/" + txid.hex())

    def submit(self, tx: bytes) -> bytes:
        """POST /v1/tx; returns the txid once the node answered 202 (durable)."""
        st, raw = self._req("POST", "/v1/tx", tx, "application/x-protobuf")
        if st != 202:
            raise NodeError(st, "EUNEXPECTED", raw.decode(errors="replace"))
        return bytes.fromhex(json.loads(raw)["txid"])

    def send(self, key: Key, build, *args, nonce=None, chain_id=None, **kw) -> bytes:
        """Builds (with TxBody.<kind>), signs and submits; the nonce comes from the node."""
        if chain_id is None:
            chain_id = self.status()["chain_id"]
        if nonce is None:
            nonce = self.account(key.public)["next_nonce"]
        body = build(chain_id, key.public, nonce, *args, **kw)
        _, sig = sign_body(key, body)
        return self.submit(signed_tx(body, sig))

    def wait(self, txid: bytes, timeout: float = 30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            doc = self.tx(txid)
            if doc["status"] in ("committed", "refused"):
                return doc
            time.sleep(0.1)
        raise TimeoutError("tx %s not in a block after %.0f s" % (txid.hex(), timeout))

    def events(self, kinds=None, account=None, slot=None, from_height=None, last_event_id=None,
               timeout=None):
        """Follows GET /v1/events. Yields dicts {"id","event","data"}: data is the parsed JSON;
        comments are skipped; a `dropped` event is yielded and then the stream ends (resume with
        last_event_id = the last id received). Raises NodeError for a refused subscription."""
        q = []
        if kinds:
            q.append("kinds=" + ",".join(kinds))
        if account:
            q.append("account=" + account.hex())
        if slot is not None:
            q.append("slot=%d" % slot)
        if from_height is not None:
            q.append("from_height=%d" % from_height)
        req = urllib.request.Request(self.url + "/v1/events" + ("?" + "&".join(q) if q else ""))
        req.add_header("Accept", "text/event-stream")
        if last_event_id:
            req.add_header("Last-Event-ID", last_event_id)
        try:
            resp = urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as e:
            doc = json.loads(e.read() or b"{}")
            raise NodeError(e.code, doc.get("code"), doc.get("error")) from None
        with resp:
            ev = {}
            for raw in resp:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line == "":
                    if "data" in ev:
                        ev["data"] = json.loads(ev["data"])
                        yield ev
                    ev = {}
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    ev["data"] = ev["data"] + "\n" + value if "data" in ev else value
                elif name in ("id", "event"):
                    ev[name] = value


# ---------------------------------------------------------------- verification (docs/ledger.md)
MERKLE_EMPTY = hashlib.sha256(b"TEM/merkle/empty").digest()


def _h(*parts):
    return hashlib.sha256(b"".join(parts)).digest()


def merkle_root(leaves):
    """Section 2: leaves enter as H(0x00||L), inner nodes H(0x01||l||r), an odd last node is
    carried up unchanged."""
    if not leaves:
        return MERKLE_EMPTY
    level = [_h(b"\x00", leaf) for leaf in leaves]
    while len(level) > 1:
        nxt = [_h(b"\x01", level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def merkle_verify(leaf: bytes, index: int, count: int, siblings, root: bytes) -> bool:
    """Checks an inclusion path: `siblings` lists the sibling hash at each level where the node
    had one, bottom up. The tree shape comes from (index, count), so a path cannot claim a
    sibling where the node was carried up."""
    if not 0 <= index < count:
        return False
    node, it = _h(b"\x00", leaf), iter(siblings)
    while count > 1:
        if index % 2 == 1:
            node = _h(b"\x01", next(it, b""), node)
        elif index + 1 < count:
            node = _h(b"\x01", node, next(it, b""))
        index, count = index // 2, (count + 1) // 2
    return next(it, None) is None and node == root


def state_leaf(key: bytes, value: bytes) -> bytes:
    """Section 4: the state tree's leaf for one entry."""
    return _h(b"\x02", struct.pack("<I", len(key)), key, value)


def block_hash(header: dict) -> bytes:
    """Section 3, from the JSON header of GET /v1/blocks/{h} (hex byte fields)."""
    cid = header["chain_id"].encode()
    x = lambda k: bytes.fromhex(header.get(k, ""))
    return _h(b"TEM/block/v1", struct.pack("<I", len(cid)), cid, struct.pack("<Q", header["height"]),
              x("prev_hash"), struct.pack("<Q", header["time_ms"]), x("proposer"), x("tx_root"),
              x("state_root"), x("receipts_root"), x("genesis_hash"))


def commit_digest(genesis_hash: bytes, view: int, height: int, bhash: bytes) -> bytes:
    return _h(b"TEM/commit/v1", genesis_hash, struct.pack("<Q", view), struct.pack("<Q", height), bhash)


def verify_block(blk: dict, genesis: dict):
    """Checks a block as GET /v1/blocks/{h} serves it against the genesis document: the header's
    genesis hash, the tx root over the txids, the block hash, and a certificate signed by 2f+1
    distinct genesis validators. Returns None when it holds, else the name of the failed step."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.exceptions import InvalidSignature

    hdr = blk["header"]
    gh = bytes.fromhex(genesis["hash"])
    if bytes.fromhex(hdr["genesis_hash"]) != gh:
        return "genesis_hash"
    if merkle_root([bytes.fromhex(t) for t in blk["txids"]]) != bytes.fromhex(hdr["tx_root"]):
        return "tx_root"
    bh = block_hash(hdr)
    if bh.hex() != blk["hash"]:
        return "block_hash"
    cert = blk.get("cert")
    if not cert:
        return "certificate missing"
    if cert["height"] != hdr["height"] or bytes.fromhex(cert["block_hash"]) != bh:
        return "certificate names another block"
    vals = genesis["genesis"]["validators"]
    n = len(vals)
    quorum = 2 * ((n - 1) // 3) + 1
    digest = commit_digest(gh, cert.get("view", 0), cert["height"], bh)
    seen = set()
    for s in cert["sigs"]:
        i = s.get("validator", 0)
        if i in seen or i >= n:
            return "certificate: repeated or unknown validator"
        seen.add(i)
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(vals[i]["pubkey"])).verify(
                bytes.fromhex(s["sig"]), digest)
        except (InvalidSignature, ValueError):
            return "certificate: bad signature of validator %d" % i
    if len(seen) < quorum:
        return "certificate: %d signatures, quorum %d" % (len(seen), quorum)
    return None


def verify_account_proof(proof: dict, genesis: dict):
    """Account proofs are not served yet (issue #16 item 1 waits for the new state tree). The
    check will be: verify_block(proof's block and certificate) -> merkle_verify(state_leaf(key,
    record), path, header state_root). Raises NotImplementedError until then."""
    raise NotImplementedError("GET /v1/accounts/{key}/proof is not served by this node version")
