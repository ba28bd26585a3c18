#!/usr/bin/env bash
# One device call: the GPU tests on this tree (its base2_weights refactor had not run on a GPU),
# the fused paged + own + merge launch against the library's two (fused_attend_ab.py), then bench
# ttft's placed and in-buffer columns at 1K-128K (the same flags as ../ttft_paged_regs_h200/).
set -u
. benchmarks/results/device_env.sh
D=benchmarks/results/ttft_fused_attend_h200
PYTHONPATH=$PWD:/tmp/pyd timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu 2>&1 | tail -6 > "$OUT/gpu_tests.txt"
cat "$OUT/gpu_tests.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 150 python3 $D/fused_attend_ab.py 2>&1 | grep -v Warn > "$OUT/fused_attend_ab.txt"
cat "$OUT/fused_attend_ab.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 180 python3 -m ragcompress.cli bench ttft --shape llama3-8b \
    --contexts 1024,10240,32768,131072 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
    --batches 1 --no-modes --no-host --no-stored --no-paged-int4 --no-paged-int8 --no-ragged \
    --out "$OUT/bench" > "$OUT/bench.log" 2>&1
echo "rc=$?" >> "$OUT/bench.log"
rm -f "$OUT/bench/"*.png
grep -v Warn "$OUT/bench.log" | grep -A8 "^| context_tokens"
