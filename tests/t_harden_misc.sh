#!/usr/bin/env bash
# Issue #12, found in passing:
#   a. a binary tx sent as text/plain: 415 ECONTENTTYPE (before: accepted);
#   b. slot numbers past the range: 400 ESLOT naming the range (before: 200);
#   c. /v1/status `stalled` names validators that are stopped (SIGSTOP keeps TCP up) from
#      consensus-message timing (before: an empty list);
#   d. a validator restarted on an empty data dir does not vote until it has passed the tip f+1
#      validators name (before: it voted again within seconds).
NAME=harden-misc
source "$(dirname "$0")/harden_lib.sh"
start_all
ok "4 validators commit"
N0="http://$(http 0)"
"$T" tx sign --key "$dir/p1.key" --chain-id tem-$NAME --nonce 0 --out "$dir/t.tx" transfer --to "$(pub p2)" --amount 1 >/dev/null
code=$(curl -s -o "$dir/r.json" -w '%{http_code}' -X POST --data-binary @"$dir/t.tx" -H 'Content-Type: text/plain' "$N0/v1/tx")
echo "binary tx as text/plain: $code $(cat "$dir/r.json")"
[ "$code" = 415 ] && grep -q ECONTENTTYPE "$dir/r.json" || fail "binary tx as text/plain answered $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST --data-binary @"$dir/t.tx" -H 'Content-Type: application/x-protobuf' "$N0/v1/tx")
[ "$code" = 202 ] || fail "the same tx as application/x-protobuf answered $code"
ok "binary tx as text/plain: 415 ECONTENTTYPE; as application/x-protobuf: 202"

for path in "/v1/book/99999999999999999999" "/v1/book/9223372036854775807" "/v1/trades?slot=18446744073709551615" "/v1/book/-1"; do
  code=$(curl -s -o "$dir/r.json" -w '%{http_code}' "$N0$path")
  [ "$code" = 400 ] && grep -q '"ESLOT"' "$dir/r.json" && grep -q "from 0 to" "$dir/r.json" || fail "GET $path answered $code $(cat "$dir/r.json")"
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "$N0/v1/book/3")" = 200 ] || fail "an in-range slot is refused"
ok "out-of-range slots: 400 ESLOT naming the range; slot 3: 200"

kill -STOP "${PID[n2]}" "${PID[n3]}"
missing=""
for _ in $(seq 1 100); do
  missing=$(status 0 | jq -c '.stalled.disconnected_validators // empty' 2>/dev/null || true)
  [ "$missing" = "[2,3]" ] && break
  sleep 0.2
done
kill -CONT "${PID[n2]}" "${PID[n3]}"
echo "2 of 4 stopped: stalled.disconnected_validators = ${missing:-absent}"
[ "$missing" = "[2,3]" ] || fail "stalled does not name the stopped validators: ${missing:-absent}"
ok "stalled names the 2 stopped validators [2,3] although their TCP sessions stay up"

h=$(height 0)
wait_height 0 $((h + 3)) 60 || fail "the chain did not resume"
kill -TERM "${PID[n3]}"; wait "${PID[n3]}" 2>/dev/null || true; unset "PID[n3]"
before=$(height 0)
rm -rf "$dir/n3"
mv "$dir/n3.log" "$dir/n3-first.log"
start n3 --key "$dir/v3.key" "${obsargs[@]}"
for _ in $(seq 1 100); do status 3 >/dev/null 2>&1 && break; sleep 0.2; done
v=$(status 3 | j .voting)
echo "restarted on an empty data dir at chain height $before (voting=$v when first asked)"
grep -q "empty data dir: following the chain without voting" "$dir/n3.log" || fail "validator 3 did not start as a follower"
for _ in $(seq 1 150); do grep -q "voting from now on" "$dir/n3.log" && break; sleep 0.2; done
line=$(grep "voting from now on" "$dir/n3.log" | head -1)
[ -n "$line" ] || fail "validator 3 never started voting after catching up"
tip=$(sed -n 's/.*past the tip \([0-9]*\) named.*/\1/p' <<<"$line")
at=$(sed -n 's/.*caught up to height \([0-9]*\) past.*/\1/p' <<<"$line")
echo "$line"
[ "$tip" -ge "$before" ] && [ "$at" -gt "$tip" ] || fail "voting started at $at with tip $tip (chain was at $before)"
h=$(height 0)
wait_height 3 "$h" 30 || fail "validator 3 did not keep up after voting again"
ok "empty data dir: validator 3 followed without voting to height $at past tip $tip, then voted"
echo "t_harden_misc: $passed passed"
