#!/bin/bash
# One device call: the int4/int8 paged GPU tests, then bench ttft on Llama-3-8B with the bf16,
# int4 and int8 pools side by side.
pip install -q --no-deps -t /tmp/pyd .devcarry/wheels/*.whl
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
D=$OUT/ttft_paged_int8_h200
mkdir -p $D
timeout 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_fast_paged_int4_gpu.py > $D/gpu_pytest.txt 2>&1
tail -2 $D/gpu_pytest.txt
timeout 170 python3 -m ragcompress.cli bench ttft --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none --batches 1 \
  --no-modes --no-host --no-stored --no-ragged --shape llama3-8b --contexts 10240,32768 --out $D/llama > $D/llama.log 2>&1
grep "^| 10240\|^| 32768\|copy bandwidth" $D/llama.log | head -3
python3 -c "
import json; r=json.load(open('$D/llama/ttft_gpu.json'))
for row in r['rows']: print({k: row.get(k) for k in ('context_tokens','ragcompress_paged_ms','ragcompress_paged_int4_ms','ragcompress_paged_int8_ms','paged_int4_vs_copy_logits_rel_err','paged_int8_vs_copy_logits_rel_err','paged_int8_same_token_as_copy','paged_int8_insert_ms','floor_ms')})
"
rm -f $D/llama/*.png
