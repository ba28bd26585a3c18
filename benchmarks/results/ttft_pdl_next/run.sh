#!/bin/bash
# The next session's first device call: the two prepared A/Bs (~2 minutes), then the GPU tests.
export PYTHONPATH=$PWD:$PWD/benchmarks HF_HUB_OFFLINE=1
python3 benchmarks/results/ttft_pdl_next/pdl_ab.py 2>&1 | tee $OUT/pdl_ab.txt
python3 benchmarks/results/ttft_paged_v2_next/paged_v2_ab.py 2>&1 | tee $OUT/paged_v2_ab.txt
