#!/bin/bash
# One device call: bench ttft on every family, the new tree, then the session's start (318d362)
# for Llama and Qwen2.5, same call. GPU tests last.
pip install -q --no-deps -t /tmp/pyd .devcarry/wheels/*.whl 2>/dev/null
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1
B="bench ttft --contexts 10240,32768 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none --batches 1 --no-modes --no-host --no-paged --no-stored"
for s in llama3-8b qwen2.5-7b mistral-7b gemma3-12b; do
  python3 -m ragcompress.cli $B --shape $s --out $OUT/new_$s > $OUT/new_$s.log 2>&1; grep "^| [13]" $OUT/new_$s/ttft_gpu.md | head -2
done
for s in llama3-8b qwen2.5-7b; do
  (cd .devcarry/before && PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd python3 -m ragcompress.cli $B --shape $s --out $OUT/old_$s > $OUT/old_$s.log 2>&1); grep "^| [13]" $OUT/old_$s/ttft_gpu.md | head -2
done
rm -f $OUT/*/*.png $OUT/*.log $OUT/*/*.json
