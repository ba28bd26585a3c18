#!/usr/bin/env bash
# One device call: the disk tier on the H200's host, the tree before the checks moved onto the
# reading threads (.devcarry/before: 482dd70's ragcompress) against this one. First store_read
# (two rounds, the trees taking turns), then bench ttft's disk column at 10K and 32K on each tree
# (the bench package is this tree's: both get the same-process bytes floor, kvzip_disk_bytes_ms).
set -u
. benchmarks/results/device_env.sh
nproc > "$OUT/host.txt"; nvidia-smi --query-gpu=name,driver_version --format=csv >> "$OUT/host.txt"
mkdir -p /tmp/trees/new && cp -r ragcompress /tmp/trees/new/ && cp -r .devcarry/before /tmp/trees/before
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 240 python3 benchmarks/store_read.py --rounds 2 \
    --trees /tmp/trees/before,/tmp/trees/new --dense-contexts '' --out "$OUT/store_read" > "$OUT/store_read.log" 2>&1
echo "store_read rc=$?"; grep "^| [0-9]" "$OUT/store_read/store_read.md"
FLAGS="--shape llama3-8b --contexts 10240,32768 --repeats 5 --warmup 1 --prefill-repeats 1 --static-compile none
    --batches 1 --no-modes --no-stored --no-paged --no-paged-int4 --no-paged-int8 --no-ragged"
for tree in new before; do
    PYTHONPATH=/tmp/trees/$tree:$PWD/benchmarks:/tmp/pyd timeout 150 python3 -m ragcompress.cli bench ttft $FLAGS \
        --out "$OUT/ttft_$tree" > "$OUT/ttft_$tree.log" 2>&1
    echo "$tree rc=$?"
    rm -f "$OUT/ttft_$tree/"*.png
    grep -A3 "^| context_tokens | kvzip_tokens" "$OUT/ttft_$tree/ttft_gpu.md"
done
