#!/bin/bash
# Second call: Qwen2.5-7B only, new / old (318d362) / new in one call, to tell a change from
# noise in the first call's cold and compressed columns.
pip install -q --no-deps -t /tmp/pyd .devcarry/wheels/*.whl 2>/dev/null
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd HF_HUB_OFFLINE=1
B="bench ttft --shape qwen2.5-7b --contexts 10240,32768 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none --batches 1 --no-modes --no-host --no-paged --no-stored"
python3 -m ragcompress.cli $B --out $OUT/qwen_new1 > /dev/null 2>&1; grep "^| [13]" $OUT/qwen_new1/ttft_gpu.md
(cd .devcarry/before && PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd python3 -m ragcompress.cli $B --out $OUT/qwen_old > /dev/null 2>&1); grep "^| [13]" $OUT/qwen_old/ttft_gpu.md
python3 -m ragcompress.cli $B --out $OUT/qwen_new2 > /dev/null 2>&1; grep "^| [13]" $OUT/qwen_new2/ttft_gpu.md
rm -f $OUT/*/*.png $OUT/*/*.json
