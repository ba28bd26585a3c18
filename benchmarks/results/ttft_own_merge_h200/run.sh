#!/bin/bash
# One device call, most wanted first: the own pass + merge A/B (on the tree before the library
# took v2, copied to .devcarry/before), bench ttft on this tree for Qwen2.5, the paged engine's
# GPU tests, bench ttft for Llama with the paged column, then the TMA context, paged v4/v5 and
# skinny GEMM A/Bs.
pip install -q --no-deps -t /tmp/pyd .devcarry/wheels/*.whl 2>/dev/null
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
B="bench ttft --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none --batches 1 --no-modes --no-host --no-stored"
(cd .devcarry/before && PYTHONPATH=$PWD:/tmp/pyd python3 benchmarks/results/ttft_own_merge_h200/own_merge_ab.py 2>&1 | tee $OUT/own_merge_ab.txt)
python3 -m ragcompress.cli $B --shape qwen2.5-7b --contexts 10240,32768 --no-paged --out $OUT/qwen > $OUT/qwen.log 2>&1; grep "^| [13]" $OUT/qwen/ttft_gpu.md
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_fast_paged_gpu.py 2>&1 | tail -3 | tee $OUT/gpu_tests_paged.txt
rm -f $OUT/*/*.png $OUT/*/*.json
python3 -m ragcompress.cli $B --shape llama3-8b --contexts 1024,10240,32768 --out $OUT/llama > $OUT/llama.log 2>&1; grep "^| [13]" $OUT/llama/ttft_gpu.md
rm -f $OUT/*/*.png $OUT/*/*.json
python3 benchmarks/results/ttft_context_tma_h200/context_tma_ab.py 2>&1 | tee $OUT/context_tma_ab.txt
python3 benchmarks/results/ttft_paged_v4_h200/paged_v4_ab.py 2>&1 | tee $OUT/paged_v4_ab.txt
python3 benchmarks/results/ttft_skinny_fill_h200/skinny_fill.py 2>&1 | tee $OUT/skinny_fill.txt
