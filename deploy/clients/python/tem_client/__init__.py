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
    against the genesis validators (section 3), and account proofs (GET /v1/accounts/{key}/proof:
    certificate, header, root, state tree path, record; docs/ledger.md "Account proofs over
    HTTP") with verify_account_proof.
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
           "merkle_verify", "block_hash", "commit_digest", "verify_block", "verify_account_proof", "ProofError",
           "state_proof_decode", "state_proof_verify", "decode_block_header", "decode_commit_certificate",
           "decode_account_record", "quorum_of"]

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

    def account_proof(self, pubkey: bytes):
        """GET /v1/accounts/{key}/proof (unverified: see verify_account_proof). The node answers
        once the next block has certified its state, about one block interval."""
        return self.get("/v1/accounts/" + pubkey.hex() + "/proof")

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
    quorum = quorum_of(n)
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


# ---------------------------------------------------------------- account proofs
# docs/ledger.md, "State tree" (4.1) and "Account proofs over HTTP". Everything below is checked
# from the hex fields; the decoded fields beside them must say the same.
SMT_EMPTY = b"\x00" * 32
PROOF_KINDS = {0: "present", 1: "absent_empty", 2: "absent_leaf"}
RECORD_ROLES = ["unspecified", "prosumer", "consumer", "utility", "dso", "aggregator", "meter", "meter_data"]
PROOF_STEPS = ("certificate", "header", "root", "path", "record")


class ProofError(ValueError):
    """An account proof refused: .step is the first step that failed (one of PROOF_STEPS)."""

    def __init__(self, step, why):
        super().__init__("proof refused at step %s: %s" % (step, why))
        self.step, self.why = step, why


def _pb_fields(buf: bytes):
    """Splits a protobuf message into (field number, wire type, value) triples: varints as ints,
    length-delimited fields as bytes. Raises ValueError on a truncated or unknown encoding."""
    out, i, n = [], 0, len(buf)

    def varint():
        nonlocal i
        v = shift = 0
        while True:
            if i >= n or shift > 63:
                raise ValueError("truncated varint")
            b = buf[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return v

    while i < n:
        tag = varint()
        field, wt = tag >> 3, tag & 7
        if field == 0:
            raise ValueError("field number 0")
        if wt == 0:
            out.append((field, 0, varint()))
        elif wt == 2:
            ln = varint()
            if ln > n - i:
                raise ValueError("truncated field %d" % field)
            out.append((field, 2, bytes(buf[i:i + ln])))
            i += ln
        elif wt in (1, 5):
            w = 8 if wt == 1 else 4
            if w > n - i:
                raise ValueError("truncated field %d" % field)
            out.append((field, wt, int.from_bytes(buf[i:i + w], "little")))
            i += w
        else:
            raise ValueError("wire type %d" % wt)
    return out


def _pb_decode(buf: bytes, schema: dict) -> dict:
    """schema: field number -> (name, "u" varint | "b" bytes | "s" string | callable for a
    repeated sub-message). proto3 defaults for absent fields; the last of repeated scalars wins."""
    out = {}
    for name, kind in schema.values():
        out[name] = [] if callable(kind) else (0 if kind == "u" else b"" if kind == "b" else "")
    for field, wt, v in _pb_fields(buf):
        if field not in schema:
            continue  # unknown fields are skipped, as protobuf-c does
        name, kind = schema[field]
        if (kind == "u") != (wt == 0) or wt not in (0, 2):
            raise ValueError("field %s has the wrong wire type" % name)
        if callable(kind):
            out[name].append(kind(v))
        elif kind == "s":
            out[name] = v.decode("utf-8")
        else:
            out[name] = v
    return out


def decode_block_header(b: bytes) -> dict:
    """proto/tem.proto BlockHeader; byte fields as bytes."""
    return _pb_decode(b, {1: ("chain_id", "s"), 2: ("height", "u"), 3: ("prev_hash", "b"), 4: ("time_ms", "u"),
                          5: ("proposer", "b"), 6: ("tx_root", "b"), 7: ("state_root", "b"),
                          8: ("receipts_root", "b"), 9: ("genesis_hash", "b")})


def decode_commit_certificate(b: bytes) -> dict:
    """proto/tem.proto CommitCertificate {view, height, block_hash, sigs: [{validator, sig}]}."""
    sig = lambda m: _pb_decode(m, {1: ("validator", "u"), 2: ("sig", "b")})
    return _pb_decode(b, {1: ("view", "u"), 2: ("height", "u"), 3: ("block_hash", "b"), 4: ("sigs", sig)})


def state_proof_decode(b: bytes) -> dict:
    """The wire form of a state proof: version 1, kind, u16le depth, bitmap of non-empty
    siblings (MSB first), those siblings, then kh || vh (kinds present and absent_leaf). Any other
    length, version, kind, a depth over 256 or set bits past the depth raise ValueError."""
    if len(b) < 4 or b[0] != 1 or b[1] > 2:
        raise ValueError("not a version 1 state proof")
    kind, depth = b[1], b[2] | b[3] << 8
    if depth > 256:
        raise ValueError("depth over 256")
    nb = (depth + 7) // 8
    if len(b) < 4 + nb:
        raise ValueError("truncated bitmap")
    bm, r = b[4:4 + nb], 4 + nb
    if depth % 8 and bm[-1] & (0xFF >> (depth % 8)):
        raise ValueError("bits set past the depth")
    sib = []
    for i in range(depth):
        if bm[i // 8] & (0x80 >> (i % 8)):
            if len(b) - r < 32:
                raise ValueError("truncated sibling")
            sib.append(b[r:r + 32])
            r += 32
        else:
            sib.append(SMT_EMPTY)
    kh = vh = None
    if kind != 1:
        if len(b) - r < 64:
            raise ValueError("truncated leaf")
        kh, vh = b[r:r + 32], b[r + 32:r + 64]
        r += 64
    if r != len(b):
        raise ValueError("trailing bytes")
    return {"kind": kind, "depth": depth, "siblings": sib, "leaf_kh": kh, "leaf_vh": vh}


def _bit(h: bytes, i: int) -> int:
    return h[i // 8] >> (7 - i % 8) & 1


def smt_leaf(kh: bytes, vh: bytes) -> bytes:
    """Section 4.1: the leaf of an entry, H(0x00 || H(key) || H(value))."""
    return _h(b"\x00", kh, vh)


def state_proof_verify(root: bytes, key: bytes, value, p: dict) -> bool:
    """True when proof p (state_proof_decode) shows key = value under root, or, with value None,
    that key has no value. Section 4.1's rule, independent of the node's code."""
    kh, d = _h(key), p["depth"]
    if value is not None:
        if p["kind"] != 0 or p["leaf_kh"] != kh or p["leaf_vh"] != _h(value):
            return False
        node = smt_leaf(kh, p["leaf_vh"])
    elif p["kind"] == 2:
        if p["leaf_kh"] == kh or any(_bit(p["leaf_kh"], i) != _bit(kh, i) for i in range(d)):
            return False
        node = smt_leaf(p["leaf_kh"], p["leaf_vh"])
    elif p["kind"] == 1:
        node = SMT_EMPTY
    else:
        return False
    if d > 0 and p["siblings"][d - 1] == SMT_EMPTY:
        return False  # the tree would have stored this node higher up: not the canonical proof
    for i in range(d - 1, -1, -1):
        s = p["siblings"][i]
        node = _h(b"\x01", s, node) if _bit(kh, i) else _h(b"\x01", node, s)
    return node == root


def decode_account_record(b: bytes) -> dict:
    """docs/market.md "State layout": u32le bus, u8 role, 3 zero bytes, then i64le money, money
    escrow, tokens, tokens escrow, debt (48 bytes)."""
    if len(b) != 48 or b[5:8] != b"\0\0\0":
        raise ValueError("not a 48-byte account record")
    bus, role = struct.unpack_from("<IB", b)
    money, escrow, tokens, tescrow, debt = struct.unpack_from("<5q", b, 8)
    return {"bus": bus, "role": RECORD_ROLES[role] if role < len(RECORD_ROLES) else "unknown",
            "money_uunit": money, "escrow_uunit": escrow, "tokens_wh": tokens, "escrow_tokens_wh": tescrow,
            "debt_uunit": debt}


def quorum_of(n: int) -> int:
    """f = (n-1)//3 and the quorum floor((n+f)/2)+1: 2f+1 when n = 3f+1 (docs/ledger.md)."""
    f = (n - 1) // 3
    return (n + f) // 2 + 1


def _genesis_parts(genesis):
    """(hash, document) from the genesis file's bytes (preferred: the hash is computed here) or
    from Node.genesis()'s {"hash", "genesis"}."""
    if isinstance(genesis, (bytes, bytearray)):
        return hashlib.sha256(genesis).digest(), json.loads(genesis)
    return bytes.fromhex(genesis["hash"]), genesis["genesis"]


def _hexfield(obj, name, step, size=None):
    try:
        b = bytes.fromhex(obj[name])
    except (KeyError, TypeError, ValueError):
        raise ProofError(step, "no hex field %s" % name) from None
    if size is not None and len(b) != size:
        raise ProofError(step, "%s is not %d bytes" % (name, size))
    return b


def _same(step, what, want: dict, got):
    if not isinstance(got, dict):
        raise ProofError(step, "no decoded %s" % what)
    for k in set(want) | set(got):
        if k not in want or got.get(k) != want[k]:
            raise ProofError(step, "the decoded %s disagrees with its hex (field %s)" % (what, k))


def verify_account_proof(proof: dict, genesis, key: bytes = None) -> dict:
    """Checks an answer of GET /v1/accounts/{key}/proof against the genesis (the genesis file's
    bytes, or Node.genesis()'s answer): certificate, header, root, path, record, in this order
    (docs/ledger.md, "Account proofs over HTTP"). `key`, when given, is the account the caller
    asked about. Returns {"key","height","present","record"} (record None when absent); raises
    ProofError naming the first step that fails."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.exceptions import InvalidSignature

    gh, g = _genesis_parts(genesis)
    vals = g["validators"]
    if not isinstance(proof, dict):
        raise ProofError("certificate", "the document is not a JSON object")
    # certificate
    S = "certificate"
    cj = proof.get("cert")
    if not isinstance(cj, dict):
        raise ProofError(S, "no certificate")
    cb = _hexfield(cj, "hex", S)
    try:
        c = decode_commit_certificate(cb)
    except ValueError as e:
        raise ProofError(S, "cert.hex does not decode: %s" % e) from None
    _same(S, "certificate", {"hex": cb.hex(), "view": c["view"], "height": c["height"],
                             "block_hash": c["block_hash"].hex(),
                             "sigs": [{"validator": s["validator"], "sig": s["sig"].hex()} for s in c["sigs"]]}, cj)
    if len(c["block_hash"]) != 32:
        raise ProofError(S, "the certified block hash is not 32 bytes")
    digest = commit_digest(gh, c["view"], c["height"], c["block_hash"])
    seen = set()
    for s in c["sigs"]:
        i = s["validator"]
        if i >= len(vals):
            raise ProofError(S, "signature of unknown validator %d" % i)
        if i in seen:
            raise ProofError(S, "validator %d signed twice" % i)
        seen.add(i)
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(vals[i]["pubkey"])).verify(s["sig"], digest)
        except (InvalidSignature, ValueError):
            raise ProofError(S, "the signature of validator %d does not verify" % i) from None
    q = quorum_of(len(vals))
    if len(seen) < q:
        raise ProofError(S, "%d distinct validators signed; the quorum of %d is %d" % (len(seen), len(vals), q))
    # header
    S = "header"
    hj = proof.get("header")
    if not isinstance(hj, dict):
        raise ProofError(S, "no header")
    hb = _hexfield(hj, "hex", S)
    try:
        h = decode_block_header(hb)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProofError(S, "header.hex does not decode: %s" % e) from None
    for f in ("prev_hash", "proposer", "tx_root", "state_root", "receipts_root", "genesis_hash"):
        if len(h[f]) != 32:
            raise ProofError(S, "header field %s is not 32 bytes" % f)
    hdict = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in h.items()}
    bh = block_hash(hdict)
    _same(S, "header", dict(hdict, hash=bh.hex(), hex=hb.hex()), hj)
    if bh != c["block_hash"]:
        raise ProofError(S, "the header hashes to %s, the certificate commits %s" % (bh.hex(), c["block_hash"].hex()))
    if h["height"] != c["height"]:
        raise ProofError(S, "header height %d, certificate height %d" % (h["height"], c["height"]))
    if h["chain_id"] != g["chain_id"] or h["genesis_hash"] != gh:
        raise ProofError(S, "the header is of another chain")
    # root
    S = "root"
    root = _hexfield(proof, "state_root", S, 32)
    if root != h["state_root"]:
        raise ProofError(S, "the document's state root is not the header's")
    if not isinstance(proof.get("height"), int) or proof["height"] + 1 != h["height"]:
        raise ProofError(S, "the document's height is not the header's height - 1")
    # path
    S = "path"
    pub = _hexfield(proof, "key", S, 33)
    skey = b"a" + pub
    if _hexfield(proof, "state_key", S) != skey:
        raise ProofError(S, "state_key is not 'a' || key")
    pj = proof.get("proof")
    if not isinstance(pj, dict):
        raise ProofError(S, "no proof")
    pb = _hexfield(pj, "hex", S)
    try:
        p = state_proof_decode(pb)
    except ValueError as e:
        raise ProofError(S, "proof.hex does not decode: %s" % e) from None
    want = {"hex": pb.hex(), "kind": PROOF_KINDS[p["kind"]], "depth": p["depth"],
            "siblings": [x.hex() for x in p["siblings"]]}
    if p["kind"] != 1:
        want.update(leaf_kh=p["leaf_kh"].hex(), leaf_vh=p["leaf_vh"].hex())
    _same(S, "proof", want, pj)
    present = proof.get("present")
    if not isinstance(present, bool):
        raise ProofError(S, "no present flag")
    rj = proof.get("record")
    rec = None
    if present:
        if not isinstance(rj, dict):
            raise ProofError(S, "present, but no record")
        rec = _hexfield(rj, "hex", S)
        if not state_proof_verify(h["state_root"], skey, rec, p):
            raise ProofError(S, "the path does not lead from this record to the header's state root")
    else:
        if rj is not None:
            raise ProofError(S, "absent, but a record is given")
        if not state_proof_verify(h["state_root"], skey, None, p):
            raise ProofError(S, "the path does not show the key absent under the header's state root")
    # record
    S = "record"
    if key is not None and bytes(key) != pub:
        raise ProofError(S, "the proof is for account %s, not %s" % (pub.hex(), bytes(key).hex()))
    fields = None
    if present:
        try:
            fields = decode_account_record(rec)
        except ValueError as e:
            raise ProofError(S, str(e)) from None
        _same(S, "record", dict(fields, hex=rec.hex()), rj)
    return {"key": pub.hex(), "height": proof["height"], "present": present, "record": fields}
