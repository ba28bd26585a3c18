#!/usr/bin/env bash
# Prepared for the next session's first device call (not run yet): the Gluon paged pass against
# the library's (gluon_paged_ab.py; compiles for sm_90 with Triton 3.6, never run on a GPU).
set -u
. benchmarks/results/device_env.sh
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 300 python3 benchmarks/results/ttft_gluon_context_h200/gluon_paged_ab.py \
    2>&1 | grep -v Warn > "$OUT/gluon_paged_ab.txt"
cat "$OUT/gluon_paged_ab.txt"
