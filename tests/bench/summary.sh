#!/bin/sh
# summary.sh LOG: folds the `bench NAME VALUE UNIT limit VALUE UNIT ratio R` lines of several
# runs of `make bench` into one line per bench: min/median/max of the figure, of its limit and
# of the ratio. The limit is measured again in every run, so its spread shows how steady the
# machine was while the figure was taken.
set -eu
awk '
function med(s,   a, n, t, i, j) {
  n = split(s, a, " ")
  for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
  return sprintf("%s/%s/%s", a[1], a[int((n + 1) / 2)], a[n])
}
$1 == "bench" && $5 == "limit" && $8 == "ratio" {
  if (!($2 in unit)) order[++k] = $2
  unit[$2] = $4; lunit[$2] = $7
  v[$2] = v[$2] " " $3; l[$2] = l[$2] " " $6; r[$2] = r[$2] " " $9; runs[$2]++
}
END {
  print "# bench NAME min/median/max UNIT limit min/median/max UNIT ratio min/median/max (runs)"
  for (i = 1; i <= k; i++) { n = order[i]
    printf "bench %s %s %s limit %s %s ratio %s (%d runs)\n", n, med(substr(v[n], 2)), unit[n], med(substr(l[n], 2)), lunit[n], med(substr(r[n], 2)), runs[n] }
}' "$1"
