#!/usr/bin/env bash
# Fourth device call (2026-12-03, second session): the split kernel in the library, its GPU tests
# and int4_insert.py (before = torch path, after = the kernel of eight one-warp parts a block).
set -u
export RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
for w in .devcarry/wheels/*.whl; do pip install -q --no-deps -t /tmp/pyd "$w" >/dev/null 2>&1; done
R=benchmarks/results/ttft_pool_quant_h200
mkdir -p "$OUT/split_call"
PYTHONPATH=$PWD:/tmp/pyd timeout 150 python3 -m pytest -q -m gpu tests/gpu/test_fast_paged_int4_gpu.py \
    tests/gpu/test_fast_paged_gpu.py 2>&1 | tail -15 > "$OUT/split_call/gpu_tests.txt"
cat "$OUT/split_call/gpu_tests.txt"
PYTHONPATH=$PWD:/tmp/pyd timeout 200 python3 $R/int4_insert.py > "$OUT/split_call/int4_insert.txt" 2>&1
cat "$OUT/split_call/int4_insert.txt"
