#!/usr/bin/env bash
# Second device call (2026-12-03, after lazy_ab.py's): the fast path's GPU tests on the tree with
# base2_weights, the kernels before/after it alternating (fold_ab.py, the tree before in
# .devcarry/before), then bench ttft (placed, in buffer).
set -u
. benchmarks/results/device_env.sh
PYTHONPATH=$PWD:/tmp/pyd timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_fast_path_gpu.py \
    tests/gpu/test_fast_paged_gpu.py tests/gpu/test_fast_paged_int4_gpu.py 2>&1 | tail -6 > "$OUT/gpu_tests.txt"
cat "$OUT/gpu_tests.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 200 python3 benchmarks/results/ttft_lazy_rescale_h200/fold_ab.py \
    --before .devcarry/before 2>&1 | grep -v Warn > "$OUT/fold_ab.txt"
cat "$OUT/fold_ab.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 175 python3 -m ragcompress.cli bench ttft --shape llama3-8b \
    --contexts 1024,10240,32768,131072 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
    --batches 1 --no-modes --no-host --no-stored --no-ragged --no-paged-int4 --no-paged-int8 \
    --out "$OUT/bench" > "$OUT/bench.log" 2>&1
tail -12 "$OUT/bench.log"
