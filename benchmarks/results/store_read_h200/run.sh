#!/usr/bin/env bash
# One device call: the disk tier's reads before and after 3aad351/4c9b40d on the H200's host
# (store_read.py, both trees in one run), then bench ttft's host/disk columns at 10K and 32K on
# this tree and on the tree before (.devcarry/before: b887c78's ragcompress).
set -u
. benchmarks/results/device_env.sh
nproc > "$OUT/host.txt"; df -h /tmp >> "$OUT/host.txt"; nvidia-smi --query-gpu=name,driver_version --format=csv >> "$OUT/host.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd OMP_WAIT_POLICY=PASSIVE timeout 200 python3 benchmarks/store_read.py \
    --trees .devcarry/before,. --out "$OUT/store_read" > "$OUT/store_read.log" 2>&1
echo "rc=$?" >> "$OUT/store_read.log"
tail -12 "$OUT/store_read.log"
FLAGS="--shape llama3-8b --contexts 10240,32768 --repeats 5 --warmup 1 --prefill-repeats 1 --static-compile none
    --batches 1 --no-modes --no-stored --no-paged --no-paged-int4 --no-paged-int8 --no-ragged"
for tree in new before; do
    P=$PWD; [ $tree = before ] && P=$PWD/.devcarry/before
    PYTHONPATH=$P:$PWD/benchmarks:/tmp/pyd timeout 170 python3 -m ragcompress.cli bench ttft $FLAGS \
        --out "$OUT/ttft_$tree" > "$OUT/ttft_$tree.log" 2>&1
    echo "rc=$?" >> "$OUT/ttft_$tree.log"
    rm -f "$OUT/ttft_$tree/"*.png
    grep -i "disk\|kvzip\|rc=" "$OUT/ttft_$tree.log" | grep -v Warn | tail -8
done
