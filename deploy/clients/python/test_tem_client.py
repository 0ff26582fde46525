"""Tests of tem_client. Offline: the worked examples of docs/ledger.md byte for byte (the order
and the MeterReading), key files, Merkle shapes. Live (TEM_NODES set by tests/t_pyclient.sh to a
running 4-validator chain, TEM_KEYS to its key folder): submit, refusals, the event stream with
its filters and resume, readings, and block verification including tampered blocks.
Run: /usr/bin/python3 -m unittest -v test_tem_client (from this folder)."""
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time
import unittest

import tem_client as tc

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
LEDGER_MD = os.path.join(ROOT, "docs", "ledger.md")
sys.path.insert(0, os.path.join(ROOT, "tests", "tools"))
import proof_tamper  # noqa: E402  (tampered account proofs, shared with tests/t_proof.sh)
WORKED_SECRET = bytes.fromhex("d2cdbbcaca7a4add9478da3b6f342e1d11ab2b525091bb870872de8a15a558c7")


def doc_value(label):
    """The hex value following `label` (a line like `Label: `hex``) in docs/ledger.md."""
    with open(LEDGER_MD, encoding="utf-8") as f:
        text = f.read()
    m = re.search(re.escape(label) + r"\s*`?([0-9a-f]{16,})`?", text)
    if not m:
        raise AssertionError("docs/ledger.md has no %r" % label)
    return bytes.fromhex(m.group(1))


class Offline(unittest.TestCase):
    def test_worked_secret_is_sha256_of_its_phrase(self):
        self.assertEqual(hashlib.sha256(b"TEM worked example key").digest(), WORKED_SECRET)

    def test_order_worked_example_of_docs_is_reproduced(self):
        k = tc.Key(WORKED_SECRET)
        self.assertEqual(k.public.hex(), "03baac241bf8278c00a90f164237f67544eb6da9c8a14c10c340564700326de4ad")
        body = tc.TxBody.order("tem-testnet-1", k.public, 0, 96, "buy", 150000, 2000)
        self.assertEqual(body, doc_value("As one hex string:"))
        txid, sig = tc.sign_body(k, body)
        self.assertEqual(txid, doc_value("Digest = txid = SHA-256(body):"))
        self.assertEqual(sig, doc_value("Signature (compact r || s, RFC 6979 nonce, low-S):"))

    def test_meter_reading_worked_example_of_docs_is_reproduced(self):
        k = tc.Key(WORKED_SECRET)
        body = tc.TxBody.reading("tem-testnet-1", k.public, 1, 96, 1250, 3400)
        self.assertEqual(body, doc_value("MeterReading body as one hex string:"))
        txid, sig = tc.sign_body(k, body)
        self.assertEqual(txid, doc_value("MeterReading txid:"))
        self.assertEqual(sig, doc_value("MeterReading signature:"))
        self.assertEqual(tc.signed_tx(body, sig), doc_value("MeterReading SignedTx:"))

    def test_signatures_are_low_s_for_many_messages(self):
        k = tc.Key(WORKED_SECRET)
        for i in range(200):
            _, sig = tc.sign_body(k, b"body %d" % i)
            self.assertLessEqual(int.from_bytes(sig[32:], "big"), tc.SECP256K1_N // 2)

    def test_key_file_round_trip_and_refusals(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "k.key")
            k = tc.Key.generate()
            k.save(p)
            self.assertEqual(os.stat(p).st_mode & 0o777, 0o600)
            self.assertEqual(tc.Key.load(p).public, k.public)
            with self.assertRaises(FileExistsError):
                k.save(p)
            bad = os.path.join(d, "bad.key")
            with open(bad, "w") as f:
                json.dump({"type": "meter", "secret": k.secret.hex(), "public": "02" + "00" * 32}, f)
            with self.assertRaises(ValueError):
                tc.Key.load(bad)
            v = os.path.join(d, "v.key")
            with open(v, "w") as f:
                json.dump({"type": "validator", "secret": "00" * 64, "public": "00" * 32}, f)
            with self.assertRaises(ValueError):
                tc.Key.load(v)

    def test_merkle_odd_node_is_carried_not_duplicated(self):
        a, b, c = (hashlib.sha256(x).digest() for x in (b"a", b"b", b"c"))
        self.assertEqual(tc.merkle_root([]), hashlib.sha256(b"TEM/merkle/empty").digest())
        self.assertNotEqual(tc.merkle_root([a, b, c]), tc.merkle_root([a, b, c, c]))
        H = lambda *p: hashlib.sha256(b"".join(p)).digest()
        la, lb, lc = H(b"\0", a), H(b"\0", b), H(b"\0", c)
        self.assertEqual(tc.merkle_root([a, b, c]), H(b"\1", H(b"\1", la, lb), lc))
        # paths: c has one sibling (the ab node), a has two
        root = tc.merkle_root([a, b, c])
        self.assertTrue(tc.merkle_verify(c, 2, 3, [H(b"\1", la, lb)], root))
        self.assertTrue(tc.merkle_verify(a, 0, 3, [lb, lc], root))
        self.assertFalse(tc.merkle_verify(a, 0, 3, [lb], root))
        self.assertFalse(tc.merkle_verify(c, 2, 3, [H(b"\1", la, lb), la], root))
        self.assertFalse(tc.merkle_verify(b, 0, 3, [lb, lc], root))

    def test_state_tree_worked_example_proofs_of_docs_verify(self):
        # docs/ledger.md 4.1: root over alice=100, bob=250, carol=75, dave=0; the proof that
        # bob = 250 and the proof that erin is absent, each in the wire form as printed there.
        with open(LEDGER_MD, encoding="utf-8") as f:
            text = f.read()
        root = doc_value("root = H(0x01 || N1 || leaf(bob))          =")
        blocks = re.findall(r"```\n(01 0[02] [0-9a-f ]+\n(?:[0-9a-f]{64}.*\n)+)```", text)
        self.assertEqual(len(blocks), 2)
        wire = [bytes.fromhex("".join(re.findall(r"^([0-9a-f ]+?)(?:\s{2,}.*)?$", b, re.M)).replace(" ", "")) for b in blocks]
        bob, erin = (tc.state_proof_decode(w) for w in wire)
        self.assertEqual((bob["kind"], bob["depth"], erin["kind"], erin["depth"]), (0, 1, 2, 3))
        self.assertTrue(tc.state_proof_verify(root, b"bob", b"250", bob))
        self.assertFalse(tc.state_proof_verify(root, b"bob", b"251", bob))
        self.assertFalse(tc.state_proof_verify(root, b"bob", None, bob))
        self.assertTrue(tc.state_proof_verify(root, b"erin", None, erin))
        self.assertFalse(tc.state_proof_verify(root, b"dave", None, erin))
        for i in range(len(wire[1])):  # every single-bit change is refused or proves nothing
            t = bytearray(wire[1])
            t[i] ^= 0x04
            try:
                p = tc.state_proof_decode(bytes(t))
            except ValueError:
                continue
            self.assertFalse(tc.state_proof_verify(root, b"erin", None, p), "byte %d" % i)


NODES = [u for u in os.environ.get("TEM_NODES", "").split(",") if u]
KEYS = os.environ.get("TEM_KEYS", "")


@unittest.skipUnless(NODES and KEYS, "TEM_NODES and TEM_KEYS name a live chain (tests/t_pyclient.sh)")
class Live(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.nodes = [tc.Node(u) for u in NODES]
        cls.n = cls.nodes[0]
        cls.p1 = tc.Key.load(os.path.join(KEYS, "p1.key"))
        cls.p2 = tc.Key.load(os.path.join(KEYS, "p2.key"))
        cls.p3 = tc.Key.load(os.path.join(KEYS, "p3.key"))
        cls.m1 = tc.Key.load(os.path.join(KEYS, "m1.key"))  # p1's meter: it signs p1's readings
        cls.genesis = cls.n.genesis()

    def test_genesis_and_status_clock(self):
        st = self.n.status()
        self.assertEqual(st["genesis_hash"], self.genesis["hash"])
        g = self.genesis["genesis"]
        self.assertEqual(st["chain_id"], g["chain_id"])
        c = st["clock"]
        sm = g["market"]["slot_ms"]
        self.assertEqual(c["slot_ms"], sm)
        self.assertEqual(st["current_slot"], (c["now_ms"] - g["genesis_time_ms"]) // sm)
        gc = g["market"].get("gate_closure_ms", 300000)
        self.assertEqual(st["gate_closure_ms"], g["genesis_time_ms"] + st["current_slot"] * sm - gc)
        self.assertEqual(c["next_open_slot_gate_closure_ms"], g["genesis_time_ms"] + c["next_open_slot"] * sm - gc)
        self.assertLessEqual(c["next_open_slot_gate_closure_ms"] - sm, c["now_ms"])
        self.assertGreater(c["next_open_slot_gate_closure_ms"], c["now_ms"])
        self.assertGreaterEqual(st["next_reading_deadline_ms"], c["now_ms"])

    def test_transfer_commits_and_bad_signature_is_refused(self):
        before = self.n.account(self.p3.public)["money_uunit"]
        txid = self.n.send(self.p2, tc.TxBody.transfer, self.p3.public, 777)
        doc = self.nodes[1].wait(txid)
        self.assertEqual(doc["status"], "committed")
        self.assertEqual(self.n.account(self.p3.public)["money_uunit"], before + 777)
        nonce = self.n.account(self.p2.public)["next_nonce"]
        body = tc.TxBody.transfer(self.genesis["genesis"]["chain_id"], self.p2.public, nonce, self.p3.public, 1)
        _, sig = tc.sign_body(self.p2, body)
        bad = bytes([sig[0] ^ 1]) + sig[1:]
        with self.assertRaises(tc.NodeError) as e:
            self.n.submit(tc.signed_tx(body, bad))
        self.assertEqual((e.exception.status, e.exception.code), (400, "ESIG"))
        self.assertEqual(self.n.account(self.p2.public)["next_nonce"], nonce)  # nothing changed

    def test_events_follow_a_trade_by_account_and_resume(self):
        start = self.n.status()["height"] + 1
        got, ready = [], threading.Event()

        def follow():
            for ev in self.nodes[2].events(kinds=["tx", "trade"], account=self.p1.public,
                                           from_height=start, timeout=30):
                got.append(ev)
                if ev["event"] == "trade":
                    return

        th = threading.Thread(target=follow, daemon=True)
        th.start()
        slot = self.n.status()["clock"]["next_open_slot"] + 2
        sell = self.n.send(self.p1, tc.TxBody.order, slot, "sell", 100000, 1000)
        self.n.wait(sell)
        buy = self.n.send(self.p2, tc.TxBody.order, slot, "buy", 120000, 600)
        self.assertEqual(self.n.wait(buy)["status"], "committed")
        th.join(30)
        self.assertFalse(th.is_alive(), "no trade event within 30 s")
        kinds = [e["event"] for e in got]
        self.assertEqual(kinds, ["tx", "trade"])  # p2's buy tx does not concern p1; the trade does
        self.assertEqual(got[0]["data"]["txid"], sell.hex())
        t = got[1]["data"]
        self.assertEqual((t["seller"], t["buyer"]), (self.p1.public.hex(), self.p2.public.hex()))
        self.assertEqual((t["quantity_wh"], t["price"], t["slot"]), (600, 100000, slot))
        self.assertEqual(t["txid"], buy.hex())
        # resume after the first event: exactly the second one again, from another node
        again = next(self.nodes[3].events(kinds=["tx", "trade"], account=self.p1.public,
                                          last_event_id=got[0]["id"], timeout=10))
        self.assertEqual(again, got[1])
        # a filter the node cannot parse is refused before any stream starts
        with self.assertRaises(tc.NodeError) as e:
            next(self.n.events(kinds=["nope"]))
        self.assertEqual((e.exception.status, e.exception.code), (400, "EFILTER"))

    def test_meter_reading_mints_tokens_and_its_slot_settles_on_the_stream(self):
        # Wait, by the node's clock, for a reading window with 2.5 s left (10 s slots, 5 s windows).
        for _ in range(300):
            c = self.n.status()["clock"]
            if c["reading_window_start_ms"] + 300 <= c["now_ms"] <= c["next_reading_deadline_ms"] - 2500:
                break
            time.sleep(0.05)
        r = c["reading_slot"]
        start = self.n.status()["height"] + 1
        # A meter is a device, not an account: its first reading has nonce 0. p1's own trading
        # key may not sign a reading (ENOTMETER).
        with self.assertRaises(tc.NodeError):
            self.n.wait(self.n.send(self.p1, tc.TxBody.reading, r, 100, 2500))
        txid = self.n.send(self.m1, tc.TxBody.reading, r, 100, 2500, nonce=0)
        doc = self.n.wait(txid)
        self.assertEqual(doc["status"], "committed", doc)
        self.assertEqual(doc["receipt"]["minted_wh"], 2500)
        # The first block after the deadline settles slot r: one line for p1, on any node.
        ev = next(self.nodes[1].events(kinds=["settlement"], account=self.p1.public, slot=r,
                                       from_height=start, timeout=30))
        d = ev["data"]
        self.assertEqual(ev["event"], "settlement")
        self.assertEqual((d["slot"], d["pubkey"], d["export_wh"], d["import_wh"]), (r, self.p1.public.hex(), 2500, 100))
        # docs/market.md section 8: the import burns tokens or is bought (lack); the surplus
        # export is sold to the utility and its tokens burnt too.
        # docs/market.md: the slot's surplus is sold to the utility at feed-in (0.08/kWh), its
        # lack bought at retail (0.3/kWh), rounded down once.
        self.assertGreater(d["surplus_wh"], 0)
        self.assertEqual(d["utility_net_uunit"], (d["surplus_wh"] * 80000 - d["lack_wh"] * 300000) // 1000)

    def test_blocks_verify_against_the_genesis_and_tampering_is_named(self):
        tip = self.n.status()["height"]
        for h in range(1, tip + 1, max(1, tip // 10)):
            blk = self.n.block(h)
            self.assertIsNone(tc.verify_block(blk, self.genesis), "block %d" % h)
        blk = self.n.block(tip)
        t = json.loads(json.dumps(blk))
        t["header"]["time_ms"] += 1
        self.assertEqual(tc.verify_block(t, self.genesis), "block_hash")
        t = json.loads(json.dumps(blk))
        t["txids"].append("00" * 32)
        self.assertEqual(tc.verify_block(t, self.genesis), "tx_root")
        t = json.loads(json.dumps(blk))
        s = t["cert"]["sigs"][0]["sig"]
        t["cert"]["sigs"][0]["sig"] = ("0" if s[0] != "0" else "1") + s[1:]
        self.assertIn("bad signature", tc.verify_block(t, self.genesis))
        t = json.loads(json.dumps(blk))
        t["cert"]["sigs"] = t["cert"]["sigs"][:2]
        self.assertIn("quorum", tc.verify_block(t, self.genesis))
        t = json.loads(json.dumps(blk))
        t["cert"]["sigs"].append(t["cert"]["sigs"][0])
        self.assertIn("repeated", tc.verify_block(t, self.genesis))

    def test_account_proof_verifies_and_each_tampering_names_its_step(self):
        with open(os.path.join(KEYS, "g.json"), "rb") as f:
            gbytes = f.read()  # the auditor's own copy of the genesis, not the node's word
        acct = self.n.account(self.p3.public)
        for node in self.nodes[:2]:
            doc = node.account_proof(self.p3.public)
            got = tc.verify_account_proof(doc, gbytes, self.p3.public)
            self.assertTrue(got["present"])
            self.assertEqual((got["record"]["bus"], got["record"]["role"]), (acct["bus"], acct["role"]))
            self.assertEqual(doc["header"]["height"], doc["height"] + 1)
            self.assertEqual(tc.verify_account_proof(doc, self.genesis)["record"], got["record"])
        for name, step, t in proof_tamper.tampered(doc):
            with self.assertRaises(tc.ProofError, msg=name) as e:
                tc.verify_account_proof(t, gbytes, self.p3.public)
            self.assertEqual(e.exception.step, step, "%s: %s" % (name, e.exception))
        # a genuine proof of another account is refused for this one
        with self.assertRaises(tc.ProofError) as e:
            tc.verify_account_proof(self.n.account_proof(self.p2.public), gbytes, self.p3.public)
        self.assertEqual(e.exception.step, "record")
        # a proof checked against another chain's genesis fails at the certificate
        other = json.loads(gbytes)
        other["chain_id"] = "another-chain"
        with self.assertRaises(tc.ProofError) as e:
            tc.verify_account_proof(doc, json.dumps(other).encode())
        self.assertEqual(e.exception.step, "certificate")

    def test_proofs_of_every_participant_and_of_random_unknown_keys_verify(self):
        # Both proof kinds for absence show up over enough unknown keys; all are fetched at once
        # (8 at a time: the node's per-address bound) and most share one certifying block.
        from concurrent.futures import ThreadPoolExecutor
        with open(os.path.join(KEYS, "g.json"), "rb") as f:
            gbytes = f.read()
        known = [bytes.fromhex(p["pubkey"]) for p in json.loads(gbytes)["participants"]
                 if p.get("role") not in ("meter", "meter_data")]
        unknown = [tc.Key(hashlib.sha256(b"unknown %d" % i).digest()).public for i in range(24)]
        with ThreadPoolExecutor(8) as ex:
            docs = list(ex.map(lambda k: self.nodes[1].account_proof(k), known + unknown))
        kinds = set()
        for k, d in zip(known + unknown, docs):
            got = tc.verify_account_proof(d, gbytes, k)
            self.assertEqual(got["present"], k in known, k.hex())
            kinds.add(d["proof"]["kind"])
        self.assertIn("present", kinds)
        self.assertTrue(kinds & {"absent_empty", "absent_leaf"})

    def test_unknown_account_has_a_verified_exclusion_proof(self):
        with open(os.path.join(KEYS, "g.json"), "rb") as f:
            gbytes = f.read()
        k = tc.Key.generate().public
        doc = self.nodes[3].account_proof(k)
        got = tc.verify_account_proof(doc, gbytes, k)
        self.assertEqual((got["present"], got["record"]), (False, None))
        self.assertIn(doc["proof"]["kind"], ("absent_empty", "absent_leaf"))
        with self.assertRaises(tc.NodeError) as e:
            self.n.get("/v1/accounts/%s/proof?height=0" % k.hex())
        self.assertEqual((e.exception.status, e.exception.code), (409, "EHEIGHT"))


if __name__ == "__main__":
    unittest.main()
