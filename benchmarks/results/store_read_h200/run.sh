#!/usr/bin/env bash
# One device call: the disk tier's reads on the H200's host, the tree before the change
# (.devcarry/before: b887c78's ragcompress) against this one, in one store_read run (two rounds,
# the trees taking turns; torch's default OpenMP wait policy, as a user runs it); then bench
# ttft's host/disk columns at 10K and 32K on this tree. (The first calls of this record, in
# first_call/ and second_call/, ran store_read under OMP_WAIT_POLICY=PASSIVE, and the second
# also bench ttft on the tree before.)
set -u
. benchmarks/results/device_env.sh
nproc > "$OUT/host.txt"; df -h /tmp >> "$OUT/host.txt"; nvidia-smi --query-gpu=name,driver_version --format=csv >> "$OUT/host.txt"
mkdir -p /tmp/trees/new && cp -r ragcompress /tmp/trees/new/ && cp -r .devcarry/before /tmp/trees/before
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 300 python3 benchmarks/store_read.py --rounds 2 \
    --trees /tmp/trees/before,/tmp/trees/new --dense-contexts '' --out "$OUT/store_read" > "$OUT/store_read.log" 2>&1
echo "rc=$?" >> "$OUT/store_read.log"
tail -8 "$OUT/store_read.log"
FLAGS="--shape llama3-8b --contexts 10240,32768 --repeats 5 --warmup 1 --prefill-repeats 1 --static-compile none
    --batches 1 --no-modes --no-stored --no-paged --no-paged-int4 --no-paged-int8 --no-ragged"
for tree in new; do
    PYTHONPATH=/tmp/trees/$tree:$PWD/benchmarks:/tmp/pyd timeout 170 python3 -m ragcompress.cli bench ttft $FLAGS \
        --out "$OUT/ttft_$tree" > "$OUT/ttft_$tree.log" 2>&1
    echo "rc=$?" >> "$OUT/ttft_$tree.log"
    rm -f "$OUT/ttft_$tree/"*.png
    grep -A4 "^| context_tokens | kvzip_tokens" "$OUT/ttft_$tree/ttft_gpu.md"; tail -1 "$OUT/ttft_$tree.log"
done
