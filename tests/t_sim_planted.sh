#!/usr/bin/env bash
# t_sim_planted.sh: proves the simulator can fail. Each planted bug (a removed safety rule) must
# make tem-sim report a violation and exit 1 within seeds 0..999, and the seed that caught it
# must pass once the bug is taken out again.
set -euo pipefail
BUILD=${BUILD:-build}
SIM=$BUILD/tem-sim
[ -x "$SIM" ] || make -s "$SIM"

bugs=$("$SIM" --list-planted-bugs)
[ -n "$bugs" ] || { echo "FAIL: no planted bugs listed"; exit 1; }
fails=0
for bug in $bugs; do
    set +e
    out=$("$SIM" --seeds 0..999 --planted-bug "$bug" --stop-at-first-failure --quiet)
    rc=$?
    set -e
    line=$(printf '%s\n' "$out" | grep -m1 '^seed [0-9]* failed: ' || true)
    if [ "$rc" -ne 1 ] || [ -z "$line" ]; then
        echo "FAIL: planted bug $bug was not caught in seeds 0..999 (exit $rc)"
        fails=$((fails + 1))
        continue
    fi
    seed=$(printf '%s\n' "$line" | sed -E 's/^seed ([0-9]+) failed: .*/\1/')
    if ! "$SIM" --seeds "$seed..$seed" --quiet >/dev/null; then
        echo "FAIL: seed $seed fails even without planted bug $bug"
        fails=$((fails + 1))
        continue
    fi
    echo "ok: $bug caught at $line"
done
if ! "$SIM" --planted-bug no-such-bug --seeds 0..0 >/dev/null 2>&1; then :; else
    echo "FAIL: an unknown planted bug name was accepted"; fails=$((fails + 1))
fi
[ "$fails" -eq 0 ] || exit 1
echo "t_sim_planted: all planted bugs caught"
