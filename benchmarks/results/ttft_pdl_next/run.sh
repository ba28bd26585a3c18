#!/bin/bash
# The next session's first device call: the three prepared A/Bs (~4 minutes).
export PYTHONPATH=$PWD:$PWD/benchmarks HF_HUB_OFFLINE=1
python3 benchmarks/results/ttft_pdl_next/pdl_ab.py 2>&1 | tee $OUT/pdl_ab.txt
python3 benchmarks/results/ttft_paged_v2_next/paged_v2_ab.py 2>&1 | tee $OUT/paged_v2_ab.txt
python3 benchmarks/results/ttft_gate_act_next/gate_act_ab.py 2>&1 | grep -v -i warn | tee $OUT/gate_act_ab.txt
