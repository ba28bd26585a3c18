#!/bin/bash
# One device call: the paged and fast-path GPU tests (ragged batches included), then bench ttft's
# queries/s at 10K with one shared context and with each question's own chunk set (ragged, paged).
set -x
pip install -q --no-deps -t /tmp/pyd .devcarry/wheels/*.whl
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
D=$OUT/ttft_ragged_h200
mkdir -p $D
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_fast_paged_gpu.py tests/gpu/test_fast_paged_int4_gpu.py tests/gpu/test_fast_path_gpu.py > $D/gpu_pytest.txt 2>&1
tail -15 $D/gpu_pytest.txt
timeout 330 python3 -m ragcompress.cli bench ttft --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
  --batches 1,8,32,64 --no-modes --no-host --no-stored --no-paged-int4 --shape llama3-8b --contexts 10240 --out $D/llama > $D/llama.log 2>&1
grep "^| " $D/llama.log | tail -12
rm -f $D/llama/*.png
