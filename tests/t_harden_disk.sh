#!/usr/bin/env bash
# Issue #12, attack 4 (full disk): validator 3's data dir sits on a 64 MiB tmpfs that is then
# filled. It must stay up, say disk_full in /v1/status, refuse txs with 503 EDISKFULL, keep
# serving reads, and resume by itself (catching up) once the filler is removed.
# Before: "storage I/O error", temd exited. Needs root (mount); otherwise SKIP, counted.
NAME=harden-disk
if [ "$(id -u)" != 0 ]; then echo "t_harden_disk: SKIP: needs root to mount a tmpfs"; echo "skipped 1"; exit 0; fi
source "$(dirname "$0")/harden_lib.sh"
mkdir -p "$dir/n3"
mount -t tmpfs -o size=64m tmpfs "$dir/n3" || { echo "t_harden_disk: SKIP: cannot mount a tmpfs here"; echo "skipped 1"; exit 0; }
trap 'for k in "${!PID[@]}"; do kill -TERM "${PID[$k]}" 2>/dev/null || true; done; sleep 1; umount -l "$dir/n3" 2>/dev/null || true; cleanup' EXIT
start_all
ok "4 validators commit, validator 3 on a 64 MiB tmpfs"
dd if=/dev/zero of="$dir/n3/filler" bs=1M 2>/dev/null || true
dd if=/dev/zero of="$dir/n3/filler2" bs=4k 2>/dev/null || true
full=false
for _ in $(seq 1 150); do
  full=$(status 3 | j .disk_full 2>/dev/null || echo gone)
  [ "$full" = true ] && break
  alive n3 || break
  sleep 0.2
done
alive n3 || fail "validator 3 exited on a full disk: $(grep -E 'ERROR|stopping' "$dir/n3.log" | tail -2)"
[ "$full" = true ] || fail "validator 3 never reported disk_full (got $full)"
grep -q "ERROR.*disk full" "$dir/n3.log" || fail "no ERROR line says disk full"
"$T" tx sign --key "$dir/p1.key" --chain-id tem-$NAME --nonce 0 --out "$dir/t.tx" transfer --to "$(pub p2)" --amount 1 >/dev/null
code=$(curl -s -o "$dir/r.json" -w '%{http_code}' -m 5 -X POST --data-binary @"$dir/t.tx" \
  -H 'Content-Type: application/x-protobuf' "http://$(http 3)/v1/tx")
[ "$code" = 503 ] && grep -q EDISKFULL "$dir/r.json" || fail "tx on a full disk answered $code $(cat "$dir/r.json")"
code=$(curl -s -o /dev/null -w '%{http_code}' -m 5 "http://$(http 3)/v1/blocks/1")
[ "$code" = 200 ] || fail "reads on a full disk answered $code"
h0=$(height 0)
wait_height 0 $((h0 + 3)) 30 || fail "the other validators stopped committing"
ok "full disk: validator 3 up, disk_full, tx 503 EDISKFULL, reads 200, the others commit"
rm -f "$dir/n3/filler" "$dir/n3/filler2"
h0=$(height 0)
wait_height 3 "$h0" 60 || fail "validator 3 did not resume and catch up to $h0 after space returned"
[ "$(status 3 | j .disk_full)" = false ] || fail "validator 3 still says disk_full"
grep -q "disk space is back" "$dir/n3.log" || fail "no log line about resuming"
ok "space back: validator 3 restarted itself and caught up to $h0"
echo "t_harden_disk: $passed passed"
