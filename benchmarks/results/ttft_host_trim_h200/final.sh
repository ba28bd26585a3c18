#!/bin/bash
# Last call of the session (~3 device minutes left): Qwen2.5-7B twice on the final tree, the
# fast-path GPU tests between.
pip install -q --no-deps -t /tmp/pyd .devcarry/wheels/*.whl 2>/dev/null
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1
B="bench ttft --shape qwen2.5-7b --contexts 10240,32768 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none --batches 1 --no-modes --no-host --no-paged --no-stored"
python3 -m ragcompress.cli $B --out $OUT/qwen_final1 > /dev/null 2>&1; grep "^| [13]" $OUT/qwen_final1/ttft_gpu.md
timeout 60 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_fast_path_gpu.py > $OUT/gpu_tests_final.txt 2>&1; tail -2 $OUT/gpu_tests_final.txt
python3 -m ragcompress.cli $B --out $OUT/qwen_final2 > /dev/null 2>&1; grep "^| [13]" $OUT/qwen_final2/ttft_gpu.md
rm -f $OUT/*/*.png $OUT/*/*.json
