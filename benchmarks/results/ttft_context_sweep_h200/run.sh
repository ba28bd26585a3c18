#!/bin/bash
# One device call: the contiguous and int4 paged sweep, the paged GPU tests on the tree with the
# paged pass on waves.PAGED (64-row programs, two an SM), and bench ttft on Llama-3-8B.
set -x
pip install -q --no-deps -t /tmp/pyd .devcarry/wheels/*.whl
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
D=$OUT/ttft_context_sweep_h200
P=$OUT/ttft_paged_sweep_h200
mkdir -p $D $P
timeout 270 python3 benchmarks/results/ttft_context_sweep_h200/context_sweep.py > $D/context_sweep.txt 2>&1
tail -5 $D/context_sweep.txt
timeout 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_fast_paged_gpu.py tests/gpu/test_fast_paged_int4_gpu.py > $P/gpu_pytest_paged_tiling.txt 2>&1
tail -2 $P/gpu_pytest_paged_tiling.txt
timeout 200 python3 -m ragcompress.cli bench ttft --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none --batches 1 \
  --no-modes --no-host --no-stored --shape llama3-8b --contexts 32768,131072 --out $P/llama > $P/llama.log 2>&1
grep "^| 3\|^| 1" $P/llama.log | head -4
rm -f $P/llama/*.png
