#!/usr/bin/env bash
# run_sh.sh SCRIPT...: runs the scripted tests one after the other (they start clusters, use
# ports and timing budgets of their own, so never side by side), each one's output printed as it
# runs under "== SCRIPT", and ends with one summary: scripts passed and failed, the checks they
# passed ("ok " lines), and every SKIP line with its script. Why a summary: a check that cannot
# run here (no root for network namespaces, a kernel without netem) must be counted where the
# run ends, not only mentioned in the middle of a thousand lines; a package `make deps`
# installs is never a reason to skip (the scripts fail on it). Runs every script even after a
# failure, so one red run names every failure; exits 1 when any failed.
set -u
[ $# -gt 0 ] || { echo "usage: run_sh.sh SCRIPT..." >&2; exit 2; }
log=$(mktemp /tmp/run_sh-XXXXXX)
trap 'rm -f "$log"' EXIT
passed=0 checks=0
failed=() skips=()
for t in "$@"; do
    echo "== $t"
    start=$SECONDS
    bash "$t" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    name=$(basename "$t" .sh)
    checks=$((checks + $(grep -c '^ok ' "$log")))
    while IFS= read -r line; do skips+=("$name: ${line#"$name: "}"); done < <(grep -E '(^|: )SKIP' "$log")
    if [ "$rc" = 0 ]; then
        passed=$((passed + 1))
    else
        echo "FAIL (exit $rc, $((SECONDS - start)) s): $t"
        failed+=("$t")
    fi
done
echo "sh-test: $# scripts, $passed passed, ${#failed[@]} failed; $checks checks passed; ${#skips[@]} skipped"
for s in "${skips[@]}"; do echo "sh-test: skipped: $s"; done
for f in "${failed[@]}"; do echo "sh-test: failed: $f"; done
[ ${#failed[@]} = 0 ]
