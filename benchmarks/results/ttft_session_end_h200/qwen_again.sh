#!/bin/bash
# Qwen2.5-7B's warm step at 10K/32K three more times in one call (#14's 1.5x, across runs).
pip install -q --no-deps -t /tmp/pyd .devcarry/wheels/*.whl
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
D=$OUT/ttft_session_end_h200
mkdir -p $D
for i in 1 2 3; do
  timeout 150 python3 -m ragcompress.cli bench ttft --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
    --batches 1 --no-modes --no-host --no-stored --no-paged --shape qwen2.5-7b --contexts 10240,32768 --out $D/qwen_again$i > $D/qwen_again$i.log 2>&1
  grep "^| 10240\|^| 32768\|^copy bandwidth" $D/qwen_again$i.log | cut -c1-400
  rm -f $D/qwen_again$i/*.png
done
