#!/usr/bin/env bash
# One device call: the disk tier's reads on the H200's host, the tree before the change
# (.devcarry/before: b887c78's ragcompress) against this one, in one store_read run (two rounds,
# the trees taking turns; torch's default OpenMP wait policy, as a user runs it). (The first
# calls of this record, in first_call/ and second_call/, ran store_read under
# OMP_WAIT_POLICY=PASSIVE and bench ttft's host/disk columns at 10K and 32K on both trees.)
set -u
. benchmarks/results/device_env.sh
nproc > "$OUT/host.txt"; df -h /tmp >> "$OUT/host.txt"; nvidia-smi --query-gpu=name,driver_version --format=csv >> "$OUT/host.txt"
mkdir -p /tmp/trees/new && cp -r ragcompress /tmp/trees/new/ && cp -r .devcarry/before /tmp/trees/before
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 330 python3 benchmarks/store_read.py --rounds 2 \
    --trees /tmp/trees/before,/tmp/trees/new --dense-contexts '' --out "$OUT/store_read" > "$OUT/store_read.log" 2>&1
echo "rc=$?" >> "$OUT/store_read.log"
tail -8 "$OUT/store_read.log"
