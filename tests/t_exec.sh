#!/usr/bin/env bash
# temctl exec end to end: signed txs (single files and a length-prefixed stream) through a
# temporary store and the market contracts; checks fills, refusals with their reason codes, a
# tx the ledger rejects (bad nonce), expiry via --final-time-ms, --dump balances, exit statuses,
# and that two runs give the same state root.
set -euo pipefail
B=${BUILD:-build}
T="$B/temctl"
d=$(mktemp -d /tmp/tem-exec-XXXXXX)
trap 'rm -rf "$d"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
for k in admin util p1 c1 stranger mp1 mc1; do "$T" keygen --type meter --out "$d/$k.key" >"$d/$k.pub"; done
"$T" keygen --type validator --out "$d/v.key" >"$d/v.pub"
GT=1767225600000
"$T" genesis --offline --chain-id tem-exec --validator "v0:$(cat "$d/v.pub"):127.0.0.1:26600" \
  --admin "$(cat "$d/admin.pub")" \
  --participant "$(cat "$d/util.pub"):1:utility:1000000000" \
  --participant "$(cat "$d/p1.pub"):2:prosumer:1000000" \
  --participant "$(cat "$d/c1.pub"):3:consumer:1000000" \
  --meter "$d/mp1.key:$(cat "$d/p1.pub"):2:40000:40000:5" --meter "$(cat "$d/mc1.pub"):$d/c1.key:3:40000:0:5" \
  --tariff 0:300000:50000 --time-ms $GT --out "$d/g.json" 2>/dev/null
sign() { # key nonce out kind...
  local key=$1 nonce=$2 out=$3; shift 3
  "$T" tx sign --key "$d/$key.key" --genesis "$d/g.json" --nonce "$nonce" --out "$d/$out" "$@" >/dev/null
}
sign p1 0 t1.tx order --slot 5 --side sell --price 100000 --qty 100
sign c1 0 t2.tx order --slot 5 --side buy --price 120000 --qty 60
sign c1 1 t3.tx order --slot 5 --side buy --price 300001 --qty 10      # above retail
sign c1 2 t4.tx order --slot 5 --side buy --price 90000 --qty 50       # rests
sign stranger 0 t5.tx order --slot 5 --side buy --price 90000 --qty 50 # unknown participant
sign c1 9 t6.tx order --slot 5 --side buy --price 90000 --qty 50       # wrong nonce
# t3..t6 as one length-prefixed stream
: >"$d/stream.bin"
for f in t3 t4 t5 t6; do
  n=$(stat -c %s "$d/$f.tx")
  printf "\\x00\\x00\\x$(printf %02x $((n / 256)))\\x$(printf %02x $((n % 256)))" >>"$d/stream.bin"
  cat "$d/$f.tx" >>"$d/stream.bin"
done

set +e
out=$("$T" exec --genesis "$d/g.json" --block-size 2 --dump "$d/t1.tx" "$d/t2.tx" "$d/stream.bin")
rc=$?
set -e
[ $rc = 1 ] || fail "exit $rc with an invalid tx, want 1"
[ "$(grep -c '"txid"' <<<"$out")" = 6 ] || fail "want 6 tx lines: $out"
line() { sed -n "${1}p" <<<"$out"; }
has() { grep -qF -- "$2" <<<"$1" || fail "missing $2 in $1"; }
has "$(line 1)" '"status":"applied"'
has "$(line 1)" '"remaining_wh":100'
has "$(line 2)" '"quantity_wh":60'
has "$(line 2)" '"price":100000'
has "$(line 2)" '"escrow_held":7200'
has "$(line 2)" '"escrow_released":1200'
has "$(line 2)" "\"counter_txid\":\"$("$T" tx inspect "$d/t1.tx" | grep -o '"txid":"[0-9a-f]*"' | cut -d'"' -f4)\""
has "$(line 3)" '"reason_code":"EPRICE"'
has "$(line 3)" '"code":-304'
has "$(line 4)" '"status":"applied"'
has "$(line 5)" '"reason_code":"ENOTREGISTERED"'
has "$(line 6)" '"status":"invalid"'
has "$(line 6)" '"reason":"nonce is not the signer'
final=$(line 7)
has "$final" '"height":3'
has "$final" '"state_root":"'
has "$final" "\"pubkey\":\"$(cat "$d/c1.pub")\""
grep -qF '"money_escrow_uunit":10500' <<<"$final" || fail "c1 escrow 6000 + 4500 missing: $final"

# Without the bad tx: exit 0; the same valid txs in other block sizes reach the same balances,
# and a repeated run the same root.
s1=$("$T" exec --genesis "$d/g.json" --block-size 2 "$d/t1.tx" "$d/t2.tx" "$d/t3.tx" "$d/t4.tx" | tail -1)
s2=$("$T" exec --genesis "$d/g.json" --block-size 2 "$d/t1.tx" "$d/t2.tx" "$d/t3.tx" "$d/t4.tx" | tail -1)
[ "$s1" = "$s2" ] || fail "two runs disagree: $s1 vs $s2"
# Past gate closure of slot 5 the resting buy expires: only the trade's 6000 stays escrowed.
out=$("$T" exec --genesis "$d/g.json" --final-time-ms $((GT + 5 * 900000)) --dump "$d/t1.tx" "$d/t2.tx" "$d/t3.tx" "$d/t4.tx")
has "$(tail -1 <<<"$out")" '"money_escrow_uunit":6000'
has "$(tail -1 <<<"$out")" '"height":2'

# Readings after slot 5 ends, then a final block past its deadline (the genesis default, one
# hour after the slot): the slot settles.
# Readings are signed by the meters (registered in the genesis from slot 5 on), never by the
# trading keys.
sign mp1 0 r1.tx reading --slot 5 --import 0 --export 100
sign mc1 0 r2.tx reading --slot 5 --import 60 --export 0
sign p1 0 r3.tx reading --slot 5 --import 0 --export 1000000000
out=$("$T" exec --genesis "$d/g.json" --time-ms $((GT + 6 * 900000)) "$d/r3.tx")
has "$(head -1 <<<"$out")" '"reason_code":"ENOTMETER"'
out=$("$T" exec --genesis "$d/g.json" --block-size 2 --time-ms $((GT + 1)) --step-ms $((6 * 900000)) \
  --final-time-ms $((GT + 6 * 900000 + 3600000 + 2)) --dump "$d/t1.tx" "$d/t2.tx" "$d/r1.tx" "$d/r2.tx")
has "$(sed -n 3p <<<"$out")" '"minted_wh":100'
final=$(tail -1 <<<"$out")
has "$final" '"height":3'
has "$final" '"sold_wh":60,"bought_wh":0,"delivered_wh":60'
has "$final" '"surplus_wh":40'
has "$final" '"burnt_wh":60,"lack_wh":0'
has "$final" '"money_uunit":1008000'   # p1: 6000 for 60 Wh + 2000 feed-in for 40 Wh
has "$final" '"minted_wh":100,"burnt_wh":100'

# Usage and input errors.
set +e
"$T" exec "$d/t1.tx" >/dev/null 2>&1; [ $? = 2 ] || fail "missing --genesis is not a usage error"
"$T" exec --genesis "$d/g.json" --block-size 0 "$d/t1.tx" >/dev/null 2>&1; [ $? = 2 ] || fail "block size 0 accepted"
printf '\x00\x00\x01' >"$d/trunc.bin"
"$T" exec --genesis "$d/g.json" "$d/trunc.bin" >/dev/null 2>&1; [ $? = 1 ] || fail "truncated stream accepted"
"$T" exec --genesis "$d/nope.json" "$d/t1.tx" >/dev/null 2>&1; [ $? = 1 ] || fail "missing genesis accepted"
set -e
echo "t_exec: ok"
