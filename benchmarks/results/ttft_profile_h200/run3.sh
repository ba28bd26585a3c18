#!/usr/bin/env bash
# Third device call: --profile on the lead column's own engine (tree after 15e70e3), 1K and 32K.
set -u
. benchmarks/results/device_env.sh
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 400 python3 -m ragcompress.cli bench ttft --shape llama3-8b \
    --contexts 1024,32768 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
    --batches 1 --no-modes --no-host --no-stored --no-paged-int4 --no-paged-int8 --no-ragged --profile \
    --out "$OUT/engine" > "$OUT/engine.log" 2>&1
echo "rc=$?" >> "$OUT/engine.log"
rm -f "$OUT/engine/"*.png
grep -v Warn "$OUT/engine.log" | grep -A9 "^## Where\|^rc="
