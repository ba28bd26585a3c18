#!/usr/bin/env bash
# A last device call: bench ttft's disk column at 10K, the tree before first this time, then this
# tree (the second call ran this tree first and read it slower than the tree before).
set -u
. benchmarks/results/device_env.sh
mkdir -p /tmp/trees/new && cp -r ragcompress /tmp/trees/new/ && cp -r .devcarry/before /tmp/trees/before
FLAGS="--shape llama3-8b --contexts 10240 --repeats 5 --warmup 1 --prefill-repeats 1 --static-compile none
    --batches 1 --no-modes --no-stored --no-paged --no-paged-int4 --no-paged-int8 --no-ragged"
for tree in before new; do
    PYTHONPATH=/tmp/trees/$tree:$PWD/benchmarks:/tmp/pyd timeout 95 python3 -m ragcompress.cli bench ttft $FLAGS \
        --out "$OUT/ttft_$tree" > "$OUT/ttft_$tree.log" 2>&1
    echo "$tree rc=$?"
    rm -f "$OUT/ttft_$tree/"*.png
    grep -A3 "^| context_tokens | kvzip_tokens" "$OUT/ttft_$tree/ttft_gpu.md"
done
