#!/usr/bin/env bash
# One device call: the warp-specialized Gluon paged pass against the library's, each group of
# contenders in its own process (a launch failure in one leaves the others' rows).
set -u
. benchmarks/results/device_env.sh
S=benchmarks/results/ttft_gluon_paged_ws_h200/gluon_paged_ws.py
for only in "WS, 64" "WS, 128" "one partition"; do
    tag=$(echo "$only" | tr -c 'a-z0-9\n' '_')
    PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 170 python3 $S --only "$only" 2>&1 | grep -v Warn \
        > "$OUT/ws_$tag.txt"
    echo "rc=${PIPESTATUS[0]}" >> "$OUT/ws_$tag.txt"
    cat "$OUT/ws_$tag.txt"
done
