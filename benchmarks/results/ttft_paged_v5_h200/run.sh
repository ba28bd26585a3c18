#!/bin/bash
# The session's last device call, on d8cbe61 (paged v5, own pass + merge at 32-slot tiles / 2
# warps): the paged and fast-path GPU tests, bench ttft for Llama-3-8B with the paged column and
# for Qwen2.5-7B.
pip install -q --no-deps -t /tmp/pyd .devcarry/wheels/*.whl 2>/dev/null
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
B="bench ttft --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none --batches 1 --no-modes --no-host --no-stored"
timeout 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_fast_paged_gpu.py tests/gpu/test_fast_path_gpu.py > $OUT/gpu_tests.txt 2>&1; tail -2 $OUT/gpu_tests.txt
python3 -m ragcompress.cli $B --shape llama3-8b --contexts 1024,10240,32768 --out $OUT/llama > $OUT/llama.log 2>&1; grep "^| [13]" $OUT/llama/ttft_gpu.md
rm -f $OUT/*/*.png $OUT/*/*.json
python3 -m ragcompress.cli $B --shape qwen2.5-7b --contexts 10240,32768 --no-paged --out $OUT/qwen > $OUT/qwen.log 2>&1; grep "^| [13]" $OUT/qwen/ttft_gpu.md
rm -f $OUT/*/*.png $OUT/*/*.json $OUT/*.log
