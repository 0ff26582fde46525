#!/usr/bin/env bash
# run_par.sh JOBS CMD...: runs each CMD (a test binary or a command line) with at most JOBS at
# once, each with its output in a file of its own, printed whole when it ends, under
# "== CMD (N s)". Exits 1 when any CMD failed, after every CMD has run, and names the failures;
# for Check suites it also sums their checks and failures in the closing lines.
# Why: the unit tests are single-threaded and CI has 2 cores; run one after the other they
# leave a core idle for minutes. Only for tests that share no ports, files or timing budgets
# (Check suites, fuzzers); the multi-process scripts still run one at a time.
set -u
jobs=${1:?usage: run_par.sh JOBS CMD...}
shift
out=$(mktemp -d /tmp/run_par-XXXXXX)
trap 'rm -rf "$out"' EXIT
declare -A name_of start_of
failed=()
checks=0 check_fail=0 suites=0
running=0
i=0

reap() {
    local pid rc
    wait -n -p pid
    rc=$?
    local k=${name_of[$pid]}
    echo "== ${k#*:} ($((SECONDS - ${start_of[$pid]})) s)"
    cat "$out/${k%%:*}"
    # A Check suite ends with "N%: Checks: C, Failures: F, Errors: E": summed for the summary.
    local c
    c=$(sed -n 's/^[0-9]*%: Checks: \([0-9]*\), Failures: \([0-9]*\), Errors: \([0-9]*\)$/\1 \2 \3/p' "$out/${k%%:*}" | tail -n 1)
    if [ -n "$c" ]; then
        set -- $c
        checks=$((checks + $1)) check_fail=$((check_fail + $2 + $3)) suites=$((suites + 1))
    fi
    if [ $rc -ne 0 ]; then
        echo "FAIL (exit $rc): ${k#*:}"
        failed+=("${k#*:}")
    fi
    running=$((running - 1))
}

for cmd in "$@"; do
    i=$((i + 1))
    bash -c "$cmd" >"$out/$i" 2>&1 &
    name_of[$!]="$i:$cmd"
    start_of[$!]=$SECONDS
    running=$((running + 1))
    [ $running -lt "$jobs" ] || reap
done
while [ $running -gt 0 ]; do reap; done

echo "run_par: $# run, ${#failed[@]} failed"
[ $suites = 0 ] || echo "run_par: $suites Check suites, $checks checks, $check_fail failed or errors"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'run_par: failed: %s\n' "${failed[@]}"
    exit 1
fi
