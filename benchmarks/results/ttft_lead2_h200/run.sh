#!/usr/bin/env bash
# One device call: #16's lead table refreshed on this tree (the same flags as ../ttft_lead_h200/,
# batches 1 and 32).
set -u
. benchmarks/results/device_env.sh
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.max,pcie.link.width.max --format=csv > "$OUT/gpu.txt" 2>&1
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 540 python3 -m ragcompress.cli bench ttft --shape llama3-8b \
    --contexts 1024,10240,32768,131072 --repeats 10 --warmup 2 --prefill-repeats 1 \
    --static-compile reduce-overhead --batches 1,32 --no-modes --no-stored --no-paged-int4 \
    --no-paged-int8 --no-ragged --out "$OUT/lead" > "$OUT/lead.log" 2>&1
echo "rc=$?" >> "$OUT/lead.log"
rm -f "$OUT/lead/"*.png
grep -v Warn "$OUT/lead.log" | tail -60
