"""openapi_check.py: drives every route of a live chain (success and error answers, the event
stream, the subscriber limit) and validates each response against docs/openapi.yaml with
python3-jsonschema's Draft 2020-12 validator (OpenAPI 3.1's schema dialect). Fails when a
response has a status the contract does not list for its route, a body its schema refuses, or
when a route of the contract was never exercised. Run by tests/t_openapi.sh:
  openapi_check.py SPEC NODE_URL KEY_DIR [SECOND_NODE_URL]"""
import json
import os
import re
import sys
import threading
import urllib.error
import urllib.request

import yaml
from jsonschema import Draft202012Validator, RefResolver

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "clients", "python"))
import tem_client as tc  # noqa: E402

spec_path, base, keys = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3]
base2 = sys.argv[4].rstrip("/") if len(sys.argv) > 4 else None
spec = yaml.safe_load(open(spec_path, encoding="utf-8"))
resolver = RefResolver.from_schema(spec)
Draft202012Validator.check_schema({"$ref": "#/components/schemas/Error", **{}})
for name, sch in spec["components"]["schemas"].items():
    Draft202012Validator.check_schema(sch)  # every schema is itself valid JSON Schema

templates = []
for path, item in spec["paths"].items():
    rx = "^" + re.sub(r"\{[^}]+\}", "[^/]+", re.escape(path).replace(r"\{", "{").replace(r"\}", "}")) + "$"
    templates.append((re.compile(rx), path, item))

seen = set()
checked = 0
failures = []


def deref(obj):
    while isinstance(obj, dict) and "$ref" in obj:
        _, obj = resolver.resolve(obj["$ref"])
    return obj


def validate(data, schema, what):
    errs = sorted(Draft202012Validator(schema, resolver=resolver).iter_errors(data), key=lambda e: e.path)
    for e in errs[:3]:
        failures.append("%s: %s at %s" % (what, e.message[:200], "/".join(map(str, e.path))))
    return not errs


def check(method, url_path, status, ctype, body):
    global checked
    checked += 1
    path = url_path.split("?")[0]
    what = "%s %s -> %d" % (method, url_path[:80], status)
    for rx, tpl, item in templates:
        if not rx.match(path):
            continue
        op = item.get(method.lower())
        if op is None:
            if status != 405:
                failures.append("%s: method not in the contract but not 405" % what)
            return validate(json.loads(body), spec["components"]["schemas"]["Error"], what)
        resp = op["responses"].get(str(status))
        if resp is None:
            failures.append("%s: status not listed for %s %s" % (what, method, tpl))
            return False
        seen.add((tpl, method, status))
        resp = deref(resp)
        content = resp.get("content", {})
        mt = ctype.split(";")[0].strip()
        if mt not in content:
            failures.append("%s: content type %s not in the contract (%s)" % (what, mt, list(content)))
            return False
        if mt == "application/json":
            return validate(json.loads(body), content[mt]["schema"], what)
        return True
    if status != 404:
        failures.append("%s: path not in the contract but not 404" % what)
    seen.add(("(unknown path)", method, status))
    return validate(json.loads(body), spec["components"]["schemas"]["Error"], what)


def call(method, url_path, body=None, ctype=None, headers=None):
    req = urllib.request.Request(base + url_path, data=body, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            st, ct, raw = r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        st, ct, raw = e.code, e.headers.get("Content-Type", ""), e.read()
    check(method, url_path, st, ct, raw)
    return st, raw


node = tc.Node(base)
# A live subscriber from the start: its events are built from each block as it is applied
# (node_events_committed); the replay at the end reads the same blocks back from the store. A
# client must get the same event under the same id either way.
live = []


def follow_live():
    try:
        for ev in node.events(timeout=30):
            live.append(ev)
    except Exception as e:  # noqa: BLE001 (the stream's end is checked below)
        live.append({"error": repr(e)})


threading.Thread(target=follow_live, daemon=True).start()
p1, p2 = tc.Key.load(os.path.join(keys, "p1.key")), tc.Key.load(os.path.join(keys, "p2.key"))
stranger = tc.Key(bytes(31) + b"\x07")
chain = node.status()["chain_id"]


def tx_of(key, build, *a, nonce=None):
    if nonce is None:
        nonce = node.account(key.public)["next_nonce"]
    body = build(chain, key.public, nonce, *a)
    txid, sig = tc.sign_body(key, body)
    return txid, tc.signed_tx(body, sig)


# ---- reads
call("GET", "/v1/status")
call("GET", "/v1/genesis")
st, raw = call("GET", "/v1/genesis?format=raw")
call("GET", "/v1/genesis?format=xml")
call("GET", "/v1/blocks/1")
call("GET", "/v1/blocks/abc")
call("GET", "/v1/blocks/99999999")
call("GET", "/v1/accounts/" + p1.public.hex())
call("GET", "/v1/accounts/zz")
call("GET", "/v1/accounts/" + stranger.public.hex())
call("GET", "/v1/accounts/%s/proof" % p1.public.hex())
call("GET", "/v1/accounts/%s/proof" % stranger.public.hex())  # 200, present false
call("GET", "/v1/accounts/zz/proof")
call("GET", "/v1/accounts/%s/proof?height=0" % p1.public.hex())
call("GET", "/v1/tx/" + "ab" * 32)
call("GET", "/v1/tx/xyz")
call("GET", "/v1/supply")
call("GET", "/v1/feeder")
call("GET", "/v1/feeder/slots/0")                                               # 404 ENOFEEDER
call("GET", "/v1/feeder/slots/x")                                               # 400 ESLOT
call("GET", "/metrics")
call("GET", "/v1/nope")
call("POST", "/v1/status", b"", "application/json")

# ---- a meter reading in an open window, so that its slot's settlement shows on the stream
import time  # noqa: E402
for _ in range(300):
    c = node.status()["clock"]
    if c["reading_window_start_ms"] + 300 <= c["now_ms"] <= c["next_reading_deadline_ms"] - 2500:
        break
    time.sleep(0.05)
reading_deadline = c["next_reading_deadline_ms"]
# Readings are signed by the meter key (docs/market.md): p2's meter m2, its first tx.
m2 = tc.Key.load(os.path.join(keys, "m2.key"))
r_id, r_tx = tx_of(m2, tc.TxBody.reading, c["reading_slot"], 10, 700, nonce=0)
call("POST", "/v1/tx", r_tx, "application/x-protobuf")
node.wait(r_id)

# ---- submissions, good and bad
slot = node.status()["clock"]["next_open_slot"] + 2
sell_id, sell = tx_of(p1, tc.TxBody.order, slot, "sell", 100000, 1000)
call("POST", "/v1/tx", sell, "application/x-protobuf")
call("POST", "/v1/tx", sell, "application/x-protobuf")  # 409 EDUP / ECOMMITTED
node.wait(sell_id)
# A trade event names its maker (the resting order's signer) by the counter-order's txid. Node 0
# built the sell's block for its live subscriber, so it finds the maker in its signer cache. A
# second node gets its first subscriber only now, after the sell's block: it must find the maker
# in its store (api_events.c:maker_of). Both must name p1 as the seller and p2 as the buyer.
second = []
if base2:
    node2 = tc.Node(base2)
    node2.wait(sell_id)
    ready = threading.Event()

    def follow_second():
        try:
            for ev in node2.events(kinds=["block", "trade"], timeout=30):
                ready.set()
                second.append(ev)
                if ev["event"] == "trade":
                    return
        except Exception as e:  # noqa: BLE001 (checked below: no trade event)
            second.append({"error": repr(e)})
        ready.set()

    threading.Thread(target=follow_second, daemon=True).start()
    if not ready.wait(20):
        failures.append("the second node's event stream carried no block within 20 s")
buy_id, buy = tx_of(p2, tc.TxBody.order, slot, "buy", 120000, 400)
call("POST", "/v1/tx", json.dumps({"tx": buy.hex()}).encode(), "application/json")
node.wait(buy_id)


def fill_event(events, what):
    for _ in range(100):
        for ev in list(events):
            if ev.get("event") == "trade" and ev["data"].get("txid") == buy_id.hex():
                return ev["data"]
        time.sleep(0.1)
    failures.append("%s: no trade event for the buy order" % what)
    return None


for what, evs in (("node 0, signer cache", live), ("second node, store lookup", second if base2 else None)):
    if evs is None:
        continue
    t = fill_event(evs, what)
    if t and (t.get("seller"), t.get("buyer"), t.get("counter_txid")) != (p1.public.hex(), p2.public.hex(), sell_id.hex()):
        failures.append("%s: trade event names seller %s buyer %s counter %s, want p1 %s p2 %s sell %s" % (
            what, t.get("seller"), t.get("buyer"), t.get("counter_txid"), p1.public.hex(), p2.public.hex(), sell_id.hex()))
call("GET", "/v1/tx/" + buy_id.hex())
call("POST", "/v1/tx", b"\x0a\x05junk", "application/x-protobuf")           # 400 EDECODE
call("POST", "/v1/tx", b'{"tx":"zz"}', "application/json")                    # 400 EJSON
_, bad = tx_of(p1, tc.TxBody.transfer, p2.public, 5)
call("POST", "/v1/tx", bad[:-1] + bytes([bad[-1] ^ 1]), "application/x-protobuf")  # 400 ESIG
_, far = tx_of(p1, tc.TxBody.transfer, p2.public, 5, nonce=10000)
call("POST", "/v1/tx", far, "application/x-protobuf")                          # 429 ENONCEFAR
_, unreg = tx_of(stranger, tc.TxBody.transfer, p2.public, 5, nonce=0)
call("POST", "/v1/tx", unreg, "application/x-protobuf")                        # 422 ENOTREGISTERED
def too_large():
    # H2O answers 413 from the Content-Length alone and closes: send only the headers.
    import socket
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as so:
        so.sendall(b"POST /v1/tx HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                   b"Content-Length: %d\r\n\r\n" % (64 << 20))
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = so.recv(4096)
            if not chunk:
                break
            raw += chunk
    head = raw.split(b"\r\n\r\n")[0].decode(errors="replace").split("\r\n")
    st = int(head[0].split()[1])
    ct = next((h.split(":", 1)[1].strip() for h in head[1:] if h.lower().startswith("content-type:")), "")
    check("POST", "/v1/tx", st, ct, b"")


too_large()                                                                     # 413
_, t1 = tx_of(p1, tc.TxBody.transfer, p2.public, 5)
call("POST", "/v1/txs", json.dumps([t1.hex(), "00ff"]).encode(), "application/json")
call("POST", "/v1/txs", b"[1,", "application/json")                            # 400 EJSON
call("GET", "/v1/book/%d" % slot)
call("GET", "/v1/book/x")
call("GET", "/v1/trades?slot=%d" % slot)
call("GET", "/v1/trades")

# ---- events: refusals, the per-address limit, and every event's data against its schema
call("GET", "/v1/events?kinds=nope")
call("GET", "/v1/events", headers={"Last-Event-ID": "junk"})
streams = []
for i in range(7):  # the default limit per client address: 8, the live stream above is one
    streams.append(urllib.request.urlopen(base + "/v1/events", timeout=10))
    check("GET", "/v1/events", streams[-1].status, streams[-1].headers.get("Content-Type", ""), b"")
st, raw = call("GET", "/v1/events")
if st != 429 or json.loads(raw)["code"] != "ELIMIT":
    failures.append("9th stream from one address: %d %s, want 429 ELIMIT" % (st, raw[:100]))
for s in streams:
    s.close()
event_schema = {"block": "BlockEvent", "tx": "TxEvent", "trade": "TradeEvent",
                "curtailment": "CurtailmentEvent", "settlement": "SettlementEvent",
                "dropped": "DroppedEvent", "error": "ErrorEvent"}
kinds = {}
for _ in range(300):  # until a block past the reading deadline (it settles the slot) committed
    if node.status()["last_block_time_ms"] > reading_deadline:
        break
    time.sleep(0.1)
tip = node.status()["height"]
first = None
for attempt in range(50):  # the closed streams' places free up at the next block
    try:
        gen = node.events(from_height=1, timeout=10)
        first = next(gen)
        break
    except tc.NodeError:
        time.sleep(0.2)
if first is None:
    failures.append("closed streams never freed their places")
    gen = iter(())
import itertools  # noqa: E402
replayed = {}
for ev in itertools.chain([first] if first else [], gen):
    replayed[ev.get("id")] = ev["data"]
    kinds[ev["event"]] = kinds.get(ev["event"], 0) + 1
    checked += 1
    validate(ev["data"], spec["components"]["schemas"][event_schema[ev["event"]]], "event %s %s" % (ev["event"], ev["id"]))
    if not re.match(r"^[0-9]+:[0-9]+$", ev.get("id", "")):
        failures.append("event without a HEIGHT:INDEX id: %r" % ev)
    if ev["event"] == "block" and ev["data"]["height"] > tip:  # block tip was read whole
        break
for k in ("block", "tx", "trade", "settlement"):
    if not kinds.get(k):
        failures.append("the stream carried no %s event" % k)
compared = {}
for ev in list(live):
    if "error" in ev:
        failures.append("the live stream ended: %s" % ev["error"])
        break
    if int(ev["id"].split(":")[0]) > tip:
        break
    compared[ev["event"]] = compared.get(ev["event"], 0) + 1
    if replayed.get(ev["id"]) != ev["data"]:
        failures.append("event %s live %s, replayed %s" % (ev["id"], json.dumps(ev["data"])[:300],
                                                          json.dumps(replayed.get(ev["id"]))[:300]))
        break
for k in ("block", "tx", "trade"):
    if not compared.get(k):
        failures.append("the live stream carried no %s event to compare with the replay" % k)

# ---- coverage: every route and method of the contract was exercised
for rx, tpl, item in templates:
    for m in item:
        if not any(s[0] == tpl and s[1] == m.upper() for s in seen):
            failures.append("never exercised: %s %s" % (m.upper(), tpl))

print("openapi: %d responses and events checked; %d live events equal their replay; statuses seen per route:"
      % (checked, sum(compared.values())))
for tpl in sorted({s[0] for s in seen}):
    print("  %-22s %s" % (tpl, " ".join(sorted("%s:%d" % (s[1], s[2]) for s in seen if s[0] == tpl))))
print("  events: " + " ".join("%s=%d" % kv for kv in sorted(kinds.items())))
if failures:
    print("FAIL:")
    for f in failures:
        print("  " + f)
    sys.exit(1)
print("ok - every response matches docs/openapi.yaml")
