#!/bin/bash
# One device call: the own pass + merge A/B, the skinny GEMM fill sweep, the paged v4/v5 A/B,
# the paged engine's GPU tests on the library's new paged kernel, and the context pass through TMA descriptors.
pip install -q --no-deps -t /tmp/pyd .devcarry/wheels/*.whl 2>/dev/null
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 benchmarks/results/ttft_own_merge_h200/own_merge_ab.py 2>&1 | tee $OUT/own_merge_ab.txt
python3 benchmarks/results/ttft_paged_v4_h200/paged_v4_ab.py 2>&1 | tee $OUT/paged_v4_ab.txt
python3 -m pytest -q -p no:cacheprovider tests/gpu/test_fast_paged_gpu.py 2>&1 | tail -3 | tee $OUT/gpu_tests_paged.txt
python3 benchmarks/results/ttft_context_tma_h200/context_tma_ab.py 2>&1 | tee $OUT/context_tma_ab.txt
python3 benchmarks/results/ttft_skinny_fill_h200/skinny_fill.py 2>&1 | tee $OUT/skinny_fill.txt
