"""proof_tamper.py: tampered copies of an account proof (GET /v1/accounts/{key}/proof), each
with the verification step that must refuse it (docs/ledger.md, "Account proofs over HTTP").
The decoded fields are kept in step with the hex wherever the tampering is of the data itself,
so what refuses it is the cryptographic check, not the decoded-versus-hex comparison.
Used by deploy/clients/python/test_tem_client.py and tests/t_proof.sh:
  proof_tamper.py PROOF.json OUTDIR   writes OUTDIR/NAME.json and prints "NAME STEP" per file."""
import copy
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy", "clients", "python"))
import tem_client as tc  # noqa: E402


def _flip(hexstr, byte):
    b = bytearray(bytes.fromhex(hexstr))
    b[byte] ^= 0x01
    return b.hex()


def _cert_hex(c):
    out = tc._uint(1, c["view"]) + tc._uint(2, c["height"]) + tc._bytes(3, c["block_hash"])
    for s in c["sigs"]:
        out += tc._msg(4, tc._uint(1, s["validator"]) + tc._bytes(2, s["sig"]))
    return out.hex()


def tampered(doc):
    """[(name, step, document)] for a present account's proof."""
    out = []
    t = copy.deepcopy(doc)  # a sibling byte of the path, in the wire form and the decoded list
    p = tc.state_proof_decode(bytes.fromhex(t["proof"]["hex"]))
    i = next(k for k, s in enumerate(p["siblings"]) if s != tc.SMT_EMPTY)
    off = 4 + (p["depth"] + 7) // 8
    t["proof"]["hex"] = _flip(t["proof"]["hex"], off)
    t["proof"]["siblings"][i] = _flip(t["proof"]["siblings"][i], 0)
    out.append(("sibling", "path", t))
    t = copy.deepcopy(doc)  # the record: one more micro-unit, bytes and decoded alike
    t["record"]["hex"] = (bytes.fromhex(t["record"]["hex"])[:8] +
                          (t["record"]["money_uunit"] + 1).to_bytes(8, "little", signed=True) +
                          bytes.fromhex(t["record"]["hex"])[16:]).hex()
    t["record"]["money_uunit"] += 1
    out.append(("record", "path", t))
    t = copy.deepcopy(doc)  # the decoded record says more than its bytes
    t["record"]["money_uunit"] += 1
    out.append(("record_decoded", "record", t))
    t = copy.deepcopy(doc)  # the header's state root (bytes, decoded, the document's root, the hash)
    old = t["header"]["state_root"]
    new = _flip(old, 31)
    t["header"]["hex"] = t["header"]["hex"].replace(old, new)
    t["header"]["state_root"] = t["state_root"] = new
    t["header"]["hash"] = tc.block_hash(t["header"]).hex()
    out.append(("header_root", "header", t))
    t = copy.deepcopy(doc)  # the document's root only
    t["state_root"] = _flip(t["state_root"], 0)
    out.append(("root", "root", t))
    t = copy.deepcopy(doc)  # one certificate signature
    c = tc.decode_commit_certificate(bytes.fromhex(t["cert"]["hex"]))
    c["sigs"][0]["sig"] = bytes.fromhex(_flip(c["sigs"][0]["sig"].hex(), 5))
    t["cert"]["hex"] = _cert_hex(c)
    t["cert"]["sigs"][0]["sig"] = c["sigs"][0]["sig"].hex()
    out.append(("cert_sig", "certificate", t))
    t = copy.deepcopy(doc)  # a certificate with fewer signatures than the quorum
    c = tc.decode_commit_certificate(bytes.fromhex(t["cert"]["hex"]))
    c["sigs"] = c["sigs"][:len(c["sigs"]) - 1]
    while len(c["sigs"]) >= 3:
        c["sigs"].pop()
    t["cert"]["hex"] = _cert_hex(c)
    t["cert"]["sigs"] = t["cert"]["sigs"][:len(c["sigs"])]
    out.append(("cert_quorum", "certificate", t))
    t = copy.deepcopy(doc)  # a present account passed off as absent
    t["present"], t["record"] = False, None
    out.append(("absent_lie", "path", t))
    return out


if __name__ == "__main__":
    src, outdir = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        d = json.load(f)
    for name, step, t in tampered(d):
        with open(os.path.join(outdir, name + ".json"), "w", encoding="utf-8") as f:
            json.dump(t, f)
        print(name, step)
