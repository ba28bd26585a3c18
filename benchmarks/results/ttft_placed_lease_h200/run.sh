#!/usr/bin/env bash
# One device call (from the repository root on the device): every GPU test on this tree, the
# placement's host A/B on the device's host (.devcarry/before: `git archive` of the tree before
# the change, carried), then bench ttft at 1K-128K with the placed, in-buffer and int4/int8 columns.
set -u
. benchmarks/results/device_env.sh
R=benchmarks/results/ttft_placed_lease_h200
PYTHONPATH=$PWD:/tmp/pyd timeout 230 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu 2>&1 \
    | tail -8 > "$OUT/gpu_tests.txt"
cat "$OUT/gpu_tests.txt"
PYTHONPATH=$PWD:/tmp/pyd timeout 60 python3 $R/host_ab.py --before .devcarry/before > "$OUT/host_ab.txt" 2>&1
cat "$OUT/host_ab.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 280 python3 -m ragcompress.cli bench ttft --shape llama3-8b \
    --contexts 1024,10240,32768,131072 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
    --batches 1 --no-modes --no-host --no-stored --no-ragged --out "$OUT/bench" > "$OUT/bench.log" 2>&1
tail -14 "$OUT/bench.log"
