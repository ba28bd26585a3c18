#!/usr/bin/env bash
# One device call (the session's last device time): the paged pass under register caps
# (paged_regs.py), then bench ttft's placed and in-buffer columns at 1K-128K on this tree, then
# the placement's host work on this host (../ttft_placed_host2_h200/host_prof.py).
set -u
. benchmarks/results/device_env.sh
D=benchmarks/results/ttft_paged_regs_h200
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 100 python3 $D/paged_regs.py --pick "$OUT/pick.txt" 2>&1 \
    | grep -v Warn > "$OUT/paged_regs.txt"
cat "$OUT/paged_regs.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 200 python3 -m ragcompress.cli bench ttft --shape llama3-8b \
    --contexts 1024,10240,32768,131072 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
    --batches 1 --no-modes --no-host --no-stored --no-paged-int4 --no-paged-int8 --no-ragged \
    --out "$OUT/bench" > "$OUT/bench.log" 2>&1
echo "rc=$?" >> "$OUT/bench.log"
rm -f "$OUT/bench/"*.png
grep -v Warn "$OUT/bench.log" | grep -A8 "^| context_tokens"
PYTHONPATH=$PWD:/tmp/pyd timeout 45 python3 benchmarks/results/ttft_placed_host2_h200/host_prof.py --chunks 20,256 \
    > "$OUT/host_prof.txt" 2>&1
head -12 "$OUT/host_prof.txt"
