#!/usr/bin/env bash
# Second device call: --profile after its wall and host times moved to the bench columns (tree
# 15eb77e), at 1K and 32K.
set -u
. benchmarks/results/device_env.sh
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 400 python3 -m ragcompress.cli bench ttft --shape llama3-8b \
    --contexts 1024,32768 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
    --batches 1 --no-modes --no-host --no-stored --no-paged-int4 --no-paged-int8 --no-ragged --profile \
    --out "$OUT/recheck" > "$OUT/recheck.log" 2>&1
echo "rc=$?" >> "$OUT/recheck.log"
rm -f "$OUT/recheck/"*.png
grep -v Warn "$OUT/recheck.log" | grep -A4 "^## Where\|^rc="
