#!/usr/bin/env bash
# One device call: the GPU tests of the pools (the kernel's own test among them), int4_insert.py,
# then bench ttft's placed columns (bf16 and int4 pools). Run from the repository root on the device.
set -u
export RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
for w in .devcarry/wheels/*.whl; do pip install -q --no-deps -t /tmp/pyd "$w" >/dev/null 2>&1; done
R=benchmarks/results/ttft_pool_quant_h200
PYTHONPATH=$PWD:/tmp/pyd timeout 150 python3 -m pytest -q -m gpu tests/gpu/test_fast_paged_int4_gpu.py \
    tests/gpu/test_fast_paged_gpu.py 2>&1 | tail -15 > "$OUT/gpu_tests.txt"
cat "$OUT/gpu_tests.txt"
PYTHONPATH=$PWD:/tmp/pyd timeout 150 python3 $R/int4_insert.py > "$OUT/int4_insert.txt" 2>&1
cat "$OUT/int4_insert.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 280 python3 -m ragcompress.cli bench ttft --shape llama3-8b \
    --contexts 1024,10240,32768,131072 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
    --batches 1 --no-modes --no-host --no-stored --no-ragged \
    --out "$OUT/bench" > "$OUT/bench.log" 2>&1
tail -12 "$OUT/bench.log"
