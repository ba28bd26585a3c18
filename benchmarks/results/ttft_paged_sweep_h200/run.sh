#!/bin/bash
# One device call: the paged GPU tests, the paged kernel's sweep, then bench ttft on Llama-3-8B
# with the bf16 and int4 pools (the int4 pool's prefix and chunk passes writing one partials pair).
set -x
pip install -q --no-deps -t /tmp/pyd .devcarry/wheels/*.whl
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
D=$OUT/ttft_paged_sweep_h200
mkdir -p $D
nvidia-smi --query-gpu=name,driver_version --format=csv > $D/gpu.txt
git rev-parse HEAD >> $D/gpu.txt 2>/dev/null
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_fast_paged_gpu.py tests/gpu/test_fast_paged_int4_gpu.py > $D/gpu_pytest.txt 2>&1
tail -3 $D/gpu_pytest.txt
timeout 200 python3 benchmarks/results/ttft_paged_sweep_h200/paged_sweep.py > $D/paged_sweep.txt 2>&1
tail -40 $D/paged_sweep.txt
timeout 220 python3 -m ragcompress.cli bench ttft --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none --batches 1 \
  --no-modes --no-host --no-stored --shape llama3-8b --contexts 10240,32768,131072 --out $D/llama > $D/llama.log 2>&1
tail -30 $D/llama.log
rm -f $D/llama/*.png
