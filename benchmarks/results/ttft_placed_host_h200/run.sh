#!/usr/bin/env bash
# One device call: the GPU tests the change touches, the placed request's host phases after it,
# then bench ttft (placed and in-buffer columns). Run from the repository root on the device.
set -u
export RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1
for w in .devcarry/wheels/*.whl; do pip install -q --no-deps -t /tmp/pyd "$w" >/dev/null 2>&1; done
R=benchmarks/results/ttft_placed_host_h200
PYTHONPATH=$PWD:/tmp/pyd timeout 200 python3 -m pytest -q -m gpu tests/gpu/test_fast_argmax_gpu.py \
    tests/gpu/test_fast_paged_gpu.py tests/gpu/test_fast_paged_int4_gpu.py tests/gpu/test_fast_path_gpu.py \
    2>&1 | tail -15 > "$OUT/gpu_tests.txt"
cat "$OUT/gpu_tests.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 100 python3 $R/placed_phases.py --shape llama3-8b \
    --contexts 10240,32768,131072 > "$OUT/placed_phases_after.txt" 2>&1
tail -25 "$OUT/placed_phases_after.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 240 python3 -m ragcompress.cli bench ttft --shape llama3-8b \
    --contexts 1024,10240,32768,131072 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
    --batches 1 --no-modes --no-host --no-stored --no-paged-int4 --no-paged-int8 --no-ragged \
    --out "$OUT/bench" > "$OUT/bench.log" 2>&1
tail -30 "$OUT/bench.log"
# the same call: the cos/sin A/B of the paged pass (../ttft_paged_runs_h200/paged_cs.py)
PYTHONPATH=$PWD timeout 80 python3 benchmarks/results/ttft_paged_runs_h200/paged_cs.py > "$OUT/paged_cs.txt" 2>&1
tail -40 "$OUT/paged_cs.txt"
