#!/bin/bash
# One device call on the session's final tree: every GPU-marked test, then Qwen2.5-7B's warm
# 32K step (#14) with the paged column.
pip install -q --no-deps -t /tmp/pyd .devcarry/wheels/*.whl
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
D=$OUT/ttft_session_end_h200
mkdir -p $D
git rev-parse HEAD > $D/tree.txt 2>/dev/null
timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu > $D/gpu_pytest_all.txt 2>&1
tail -4 $D/gpu_pytest_all.txt
timeout 230 python3 -m ragcompress.cli bench ttft --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
  --batches 1 --no-modes --no-host --no-stored --no-paged-int4 --no-ragged --shape qwen2.5-7b --contexts 10240,32768 --out $D/qwen > $D/qwen.log 2>&1
grep "^| 10240\|^| 32768\|copy bandwidth" $D/qwen.log | head -4
rm -f $D/qwen/*.png
