#!/usr/bin/env bash
# Issue #12, attack 4: storage faults must not lose or hide data.
#   a. 60 txs acknowledged by validator 0 (alone: nothing commits) sit in its mempool log; one
#      flipped byte in the 2nd record: after a restart 59 are back and an ERROR names the offset
#      (before: 1 back; recovery stopped at the damage and rewrote the log without the rest);
#   b. one flipped byte in the log header: temd stays up degraded (status, metrics, an ERROR that
#      names --mempool-log-reset), refuses submits 503 EMEMPOOLLOG and signs no certificate while
#      the other three commit; restarted with that flag it moves the log aside, votes again and
#      its txs commit (before: it exited 3, or earlier voted on with only a WARN);
#   c. one flipped byte in a block stored by validator 3: the start-up tail check logs an ERROR
#      naming height and hash; with no peer up GET /v1/blocks/H answers 503 EREPAIRING; once
#      peers are back the block is refetched, verified against its certificate and rewritten,
#      served with the chain's hash, and `temctl replay` of the data dir passes (before: 200 with
#      a hash other than the chain's, later 500 ECORRUPT until the operator restored it);
#   d. the same below the checked tail (--tail-check-blocks 0): the first read finds it, answers
#      503 EREPAIRING and the block is refetched.
NAME=harden-storage
source "$(dirname "$0")/harden_lib.sh"
start n0 --key "$dir/v0.key" "${obsargs[@]}"
for _ in $(seq 1 100); do status 0 >/dev/null 2>&1 && break; sleep 0.2; done
p9=$(pub p9)
acc=0
for k in 1 2 3 4 5 6; do
  for nonce in $(seq 0 9); do
    "$T" submit --node "http://$(http 0)" --key "$dir/p$k.key" --nonce $nonce transfer --to "$p9" --amount 1 >/dev/null 2>&1 && acc=$((acc + 1))
  done
done
[ "$acc" = 60 ] || fail "validator 0 accepted $acc of 60 txs"
[ "$(status 0 | j .mempool)" = 60 ] || fail "mempool does not hold 60 txs"
stop0() { kill -TERM "${PID[n0]}"; wait "${PID[n0]}" 2>/dev/null || true; unset "PID[n0]"; }
stop0
python3 - "$dir/n0/mempool.log" <<'PY' || fail "cannot flip a record byte"
import struct, sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read())
off = 40
ln = struct.unpack("<I", b[off:off + 4])[0]
off += 4 + ln + 4                      # the 2nd record
ln2 = struct.unpack("<I", b[off:off + 4])[0]
b[off + 4 + ln2 // 2] ^= 0x20          # a byte in its payload
open(p, "wb").write(b)
print("flipped a byte of the record at offset", off)
PY
start n0 --key "$dir/v0.key" "${obsargs[@]}"
for _ in $(seq 1 100); do status 0 >/dev/null 2>&1 && break; sleep 0.2; done
got=$(status 0 | j .mempool)
grep -q "ERROR.*damaged record at offset" "$dir/n0.log" || echo "(no ERROR line naming the damaged offset)"
echo "flipped byte in record 2 of 60: $got txs recovered"
[ "$got" = 59 ] || fail "recovered $got of the 59 intact txs"
grep -q "ERROR.*damaged record at offset" "$dir/n0.log" || fail "no ERROR line names the damaged record"
ok "one flipped byte in an old mempool-log record: 59 of 60 txs recovered, ERROR names the offset"

stop0
python3 -c "import sys;p=sys.argv[1];b=bytearray(open(p,'rb').read());b[3]^=1;open(p,'wb').write(b)" "$dir/n0/mempool.log"
for i in 0 1 2 3; do start "n$i" --key "$dir/v$i.key" "${obsargs[@]}"; done
for _ in $(seq 1 100); do status 0 >/dev/null 2>&1 && break; sleep 0.2; done
alive n0 || fail "temd with a damaged mempool-log header exited"
st=$(status 0)
echo "damaged header: status mempool_recovery=$(j .mempool_recovery <<<"$st") voting=$(j .voting <<<"$st") faults=$(jq -c .faults <<<"$st")"
[ "$(j .mempool_recovery <<<"$st")" = failed ] || fail "/v1/status does not report the failed recovery"
[ "$(j .voting <<<"$st")" = false ] || fail "validator 0 votes after a failed recovery"
[ "$(j '.faults[0].kind' <<<"$st")" = mempool_recovery_failed ] && [ "$(j '.faults[0].code' <<<"$st")" = ECORRUPT ] \
  && [ "$(j '.faults[0].path' <<<"$st")" = "$dir/n0/mempool.log" ] || fail "faults do not name the damaged log"
grep -q "ERROR.*mempool log.*NOT VOTING.*mempool-log-reset" "$dir/n0.log" || fail "no ERROR line names --mempool-log-reset"
curl -s "http://$(http 0)/metrics" | grep -x >/dev/null "tem_mempool_recovery_failed 1" || fail "metrics do not report the failed recovery"
code=$("$T" submit --node "http://$(http 0)" --key "$dir/p1.key" --nonce 0 transfer --to "$p9" --amount 1 2>&1 | head -c 300 || true)
echo "submit to the degraded node: $code"
grep -q "EMEMPOOLLOG" <<<"$code" || fail "a submit to the degraded node was not refused EMEMPOOLLOG"
code=$(curl -s -o "$dir/sub.json" -w '%{http_code}' -H 'Content-Type: application/json' -d '{"tx":"00"}' "http://$(http 0)/v1/tx")
[ "$code" = 503 ] && [ "$(j .code <"$dir/sub.json")" = EMEMPOOLLOG ] || fail "POST /v1/tx answered $code $(cat "$dir/sub.json"), want 503 EMEMPOOLLOG"
# The other three commit without it (after a view change: it is view 0's primary); it follows.
wait_height 1 5 90 || fail "validators 1-3 did not commit 5 blocks without validator 0"
wait_height 0 5 30 || fail "validator 0 did not follow the chain"
signers() { curl -s "http://$(http "$1")/v1/blocks/$2" | jq -c '[.cert.sigs[].validator]'; }
h1=$(height 1)
for h in $(seq 1 "$h1"); do
  s=$(signers 1 "$h")
  [ "$(jq 'index(0)' <<<"$s")" = null ] || fail "validator 0 signed the certificate of block $h: $s"
done
ok "damaged mempool-log header: node up, status/metrics report it, submits 503 EMEMPOOLLOG, not in any of $h1 certificates"

stop0
start n0 --key "$dir/v0.key" "${obsargs[@]}" --mempool-log-reset
for _ in $(seq 1 100); do status 0 >/dev/null 2>&1 && break; sleep 0.2; done
ls "$dir"/n0/mempool.log.damaged-* >/dev/null || fail "the damaged log was not kept aside"
st=$(status 0)
[ "$(j .mempool_recovery <<<"$st")" = ok ] && [ "$(j .voting <<<"$st")" = true ] && [ "$(j '.faults|length' <<<"$st")" = 0 ] \
  || fail "after --mempool-log-reset: $(jq -c '{mempool_recovery,voting,faults}' <<<"$st")"
hr=$(height 1)
txid=$("$T" submit --node "http://$(http 0)" --key "$dir/p1.key" --nonce 0 transfer --to "$p9" --amount 1) \
  || fail "validator 0 refused a tx after --mempool-log-reset"
txid=$(grep -o '[0-9a-f]\{64\}' <<<"$txid" | head -1)
for _ in $(seq 1 100); do [ "$(curl -s "http://$(http 1)/v1/tx/$txid" | j .status)" = committed ] && break; sleep 0.2; done
[ "$(curl -s "http://$(http 1)/v1/tx/$txid" | j .status)" = committed ] || fail "the tx validator 0 accepted did not commit"
# Votes again: with validator 1 (the current primary) stopped, the chain moves on only if
# validator 0 takes part (3 of 4), so every new certificate must carry its signature.
kill -TERM "${PID[n1]}"; wait "${PID[n1]}" 2>/dev/null || true; unset "PID[n1]"
hr=$(height 2)
wait_height 2 $((hr + 3)) 90 || fail "validators 0, 2, 3 did not commit without validator 1: validator 0 does not vote"
signed=0
for h in $(seq $((hr + 1)) $((hr + 3))); do [ "$(signers 2 "$h" | jq 'index(0)')" != null ] && signed=$((signed + 1)); done
echo "after the reset, validator 1 stopped: validator 0 signed $signed of the 3 certificates of blocks $((hr + 1))..$((hr + 3))"
[ $signed = 3 ] || fail "validator 0 is missing from certificates after the reset"
ok "--mempool-log-reset moved the log aside; validator 0 accepts txs (committed) and votes again"

target=2
want=$(curl -s "http://$(http 2)/v1/blocks/$target" | j .hash)
hex=$(curl -s "http://$(http 2)/v1/blocks/$target" | j .block_hex)
# Everyone stops, so validator 3 first comes up with nobody to refetch from: the damaged block
# must be out of service (503 EREPAIRING) and reported until the others are back.
for k in "${!PID[@]}"; do kill -TERM "${PID[$k]}"; done
for k in "${!PID[@]}"; do wait "${PID[$k]}" 2>/dev/null || true; unset "PID[$k]"; done
python3 - "$dir/n3/data.mdb" "$hex" <<'PY' || fail "block bytes not found in data.mdb"
import sys
path, hexs = sys.argv[1], sys.argv[2]
blk = bytes.fromhex(hexs)
data = bytearray(open(path, 'rb').read())
# LMDB writes pages copy-on-write: stale copies of the record may sit in freed pages, so every
# copy is damaged (the live one among them).
i, n = data.find(blk), 0
while i >= 0:
    data[i + len(blk) // 2] ^= 0x40
    n += 1
    i = data.find(blk, i + 1)
if n == 0: sys.exit(1)
open(path, 'wb').write(data)
PY
start n3 --key "$dir/v3.key" "${obsargs[@]}"
for _ in $(seq 1 100); do status 3 >/dev/null 2>&1 && break; sleep 0.2; done
grep -q "ERROR.*stored block $target (hash $want) is damaged" "$dir/n3.log" || fail "no ERROR names block $target and its hash"
code=$(curl -s -o "$dir/b.json" -w '%{http_code}' "http://$(http 3)/v1/blocks/$target")
echo "flipped byte in stored block $target, no peers: GET answered $code $(head -c 160 "$dir/b.json")"
[ "$code" = 503 ] && [ "$(j .code <"$dir/b.json")" = EREPAIRING ] || fail "damaged block $target answered $code, want 503 EREPAIRING"
st=$(status 3)
[ "$(j '[.faults[]|select(.kind=="block_damaged")|.height]|tostring' <<<"$st")" = "[$target]" ] || fail "status faults: $(jq -c .faults <<<"$st")"
curl -s "http://$(http 3)/metrics" | grep -x >/dev/null "tem_blocks_damaged 1" || fail "metrics do not count the damaged block"
for i in 0 1 2; do start "n$i" --key "$dir/v$i.key" "${obsargs[@]}"; done
got=
for _ in $(seq 1 150); do
  got=$(curl -s "http://$(http 3)/v1/blocks/$target" | j .hash 2>/dev/null || true)
  [ "$got" = "$want" ] && break
  sleep 0.2
done
[ "$got" = "$want" ] || fail "validator 3 did not repair block $target (answers hash $got, want $want)"
[ "$(curl -s "http://$(http 3)/v1/blocks/$target" | j .block_hex)" = "$hex" ] || fail "repaired block $target differs from validator 2's bytes"
grep -q "INFO.*repaired stored block $target (hash $want)" "$dir/n3.log" || fail "no log line for the repair"
up=$(awk '/tail check: blocks/ {s = 1} s && /peer [0-2] up/ {print substr($0, 12, 12); exit}' "$dir/n3.log")
fixed=$(grep -m1 "repaired stored block $target" "$dir/n3.log" | cut -c12-23)
echo "validator 3: first peer up at $up, block $target repaired at $fixed"
st=$(status 3)
[ "$(j '.faults|length' <<<"$st")" = 0 ] && [ "$(j .blocks_repaired <<<"$st")" = 1 ] || fail "after the repair: $(jq -c '{faults,blocks_repaired}' <<<"$st")"
curl -s "http://$(http 3)/metrics" | grep -x >/dev/null "tem_blocks_repaired_total 1" || fail "metrics do not count the repair"
h=$(height 2)
wait_height 3 $((h + 2)) 60 || fail "validator 3 did not keep up after the repair"
alive n3 || fail "validator 3 died"
kill -TERM "${PID[n3]}"; wait "${PID[n3]}" 2>/dev/null || true; unset "PID[n3]"
rp=$("$T" replay "$dir/n3" --genesis "$dir/g.json" 2>/dev/null) || fail "replay of validator 3's data dir: $rp"
echo "replay of validator 3's data dir: $rp"
[ "$(j .ok <<<"$rp")" = true ] || fail "replay: $rp"
ok "flipped byte in a stored block: ERROR names it, 503 EREPAIRING while alone, refetched and verified from peers, replay passes"

# Damage below the checked tail (the check is off here) is found by the first read of the block,
# which answers 503 EREPAIRING instead of the damaged bytes, and is refetched the same way.
t2=3
want2=$(curl -s "http://$(http 2)/v1/blocks/$t2" | j .hash)
hex2=$(curl -s "http://$(http 2)/v1/blocks/$t2" | j .block_hex)
python3 - "$dir/n3/data.mdb" "$hex2" <<'PY' || fail "block bytes not found in data.mdb"
import sys
path, hexs = sys.argv[1], sys.argv[2]
blk = bytes.fromhex(hexs)
data = bytearray(open(path, 'rb').read())
i, n = data.find(blk), 0
while i >= 0:
    data[i + len(blk) // 3] ^= 0x08
    n += 1
    i = data.find(blk, i + 1)
if n == 0: sys.exit(1)
open(path, 'wb').write(data)
PY
start n3 --key "$dir/v3.key" "${obsargs[@]}" --tail-check-blocks 0
for _ in $(seq 1 100); do status 3 >/dev/null 2>&1 && break; sleep 0.2; done
code=$(curl -s -o "$dir/b.json" -w '%{http_code}' "http://$(http 3)/v1/blocks/$t2")
echo "flipped byte in stored block $t2, tail check off: first GET answered $code $(j .code <"$dir/b.json")"
[ "$code" = 503 ] && [ "$(j .code <"$dir/b.json")" = EREPAIRING ] || fail "damaged block $t2 answered $code on first read, want 503 EREPAIRING"
got=
for _ in $(seq 1 100); do
  got=$(curl -s "http://$(http 3)/v1/blocks/$t2" | j .hash 2>/dev/null || true)
  [ "$got" = "$want2" ] && break
  sleep 0.2
done
[ "$got" = "$want2" ] && [ "$(curl -s "http://$(http 3)/v1/blocks/$t2" | j .block_hex)" = "$hex2" ] || fail "block $t2 not repaired after a read found it"
grep -q "ERROR.*stored block $t2 (hash $want2) is damaged" "$dir/n3.log" || fail "no ERROR names block $t2"
ok "damage below the checked tail: the first read answers 503 EREPAIRING, then the block is refetched"
echo "t_harden_storage: $passed passed"
