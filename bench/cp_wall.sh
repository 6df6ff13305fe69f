#!/bin/sh
# The floor of the fs_copy workload: cp SRC DST, timed the way the others time themselves.
t0=$(date +%s.%N)
cp "$1" "$2" || exit 1
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" 'BEGIN { printf "wall=%.6f\n", b - a }'
