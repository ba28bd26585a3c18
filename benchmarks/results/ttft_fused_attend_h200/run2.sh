#!/usr/bin/env bash
# Second device call: every variant of fused_attend_ab.py (the first call's kernel among them).
set -u
. benchmarks/results/device_env.sh
D=benchmarks/results/ttft_fused_attend_h200
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 400 python3 $D/fused_attend_ab.py 2>&1 | grep -v Warn > "$OUT/fused_attend_ab.txt"
cat "$OUT/fused_attend_ab.txt"
