#!/usr/bin/env bash
# tx sign -> tx inspect round trip for every kind `temctl tx sign` writes, plus the exit statuses
# of inspect for a bad signature, a wrong chain id and garbage, and of the verbs' usage errors.
set -euo pipefail
B=${BUILD:-build}
T="$B/temctl"
d=$(mktemp -d /tmp/tem-tx-XXXXXX)
trap 'rm -rf "$d"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
pass=0
"$T" keygen --type meter --out "$d/a.key" >"$d/a.pub"
"$T" keygen --type validator --out "$d/v.key" >"$d/v.pub"
[ "$(stat -c %a "$d/a.key")" = 600 ] || fail "key file mode is not 0600"
[ "$(wc -c <"$d/a.pub")" = 67 ] || fail "meter public key is not 33 bytes of hex"
[ "$(wc -c <"$d/v.pub")" = 65 ] || fail "validator public key is not 32 bytes of hex"
if "$T" keygen --type meter --out "$d/a.key" 2>/dev/null; then fail "keygen overwrote a key"; fi
PUB=$(cat "$d/a.pub")
TXID=$(printf 'ab%.0s' {1..32})
sign() { "$T" tx sign --key "$d/a.key" --chain-id tem-rt --nonce 7 --out "$d/t.tx" "$@" >/dev/null; }
check() { # kind, jq-free check: each expected "key":value must appear in the JSON
  local kind=$1; shift
  out=$("$T" tx inspect "$d/t.tx" --chain-id tem-rt) || fail "$kind: inspect exit $?"
  for want in "\"kind\":\"$kind\"" '"sig_valid":true' '"nonce":7' "\"signer\":\"$PUB\"" "$@"; do
    grep -qF -- "$want" <<<"$out" || fail "$kind: missing $want in $out"
  done
  pass=$((pass+1))
}
sign order --slot 5 --side sell --price 120000 --qty 750 --tif ioc
check order '"slot":5' '"side":"sell"' '"price":120000' '"quantity_wh":750' '"tif":"ioc"'
sign cancel --order "$TXID";                check cancel "\"order_txid\":\"$TXID\""
sign reading --slot 9 --import 12 --export 3400; check reading '"slot":9' '"import_wh":12' '"export_wh":3400'
sign reading --slot 9 --import 12 --export 0 --meter "$PUB"
check reading '"slot":9' "\"meter\":\"$PUB\""
sign register --pubkey "$PUB" --bus 7 --role meter --owner "$PUB" --import-w 40000 --export-w 5000
check register '"role":"meter"' "\"owner\":\"$PUB\"" '"import_capacity_w":40000' '"export_capacity_w":5000'
sign register --pubkey "$PUB" --bus 1 --role meter_data; check register '"role":"meter_data"'
sign transfer --to "$PUB" --amount 99;      check transfer "\"to\":\"$PUB\"" '"amount":99'
sign register --pubkey "$PUB" --bus 18 --role prosumer; check register '"bus":18' '"role":"prosumer"'
sign deposit --to "$PUB" --amount 5000000;  check deposit '"amount":5000000'
sign set-tariff --from-slot 100 --period 0:300000:80000 --period 960:400000:90000
check set_tariff '"from_slot":100' '"start_minute":960' '"retail_uunit_per_kwh":400000'

# invalid inputs: exit 1 with a reason
sign order --slot 5 --side buy --price 1 --qty 1
if "$T" tx inspect "$d/t.tx" --chain-id other >/dev/null 2>&1; then fail "wrong chain id accepted"; fi
python3 - "$d/t.tx" <<'PY'
import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[-1]^=1; open(p,'wb').write(b)
PY
set +e
"$T" tx inspect "$d/t.tx" >"$d/out" 2>/dev/null; rc=$?
set -e
[ $rc = 1 ] || fail "flipped signature: exit $rc"
grep -qF '"sig_valid":false' "$d/out" || fail "flipped signature not reported"
head -c 40 /dev/urandom >"$d/junk"
set +e
"$T" tx inspect "$d/junk" >/dev/null 2>&1; rc=$?
"$T" tx sign --key "$d/a.key" --chain-id x --nonce 1 --out "$d/x" order --slot 1 --side up --price 1 --qty 1 2>/dev/null; rc2=$?
"$T" tx frobnicate 2>/dev/null; rc3=$?
set -e
[ $rc = 1 ] || fail "garbage: exit $rc"
[ $rc2 = 2 ] || fail "bad flag value: exit $rc2"
[ $rc3 = 2 ] || fail "unknown subcommand: exit $rc3"
"$T" tx --help | grep -q 'tx sign' || fail "tx --help"
echo "t_tx_roundtrip: $((pass+5)) passed, 0 failed"
