#!/bin/bash
# The next session's first device call: the three prepared A/Bs (~4 minutes).
pip install -q --no-deps -t /tmp/pyd .devcarry/wheels/*.whl 2>/dev/null
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 benchmarks/results/ttft_pdl_h200/pdl_ab.py 2>&1 | tee $OUT/pdl_ab.txt
python3 benchmarks/results/ttft_paged_v2_h200/paged_v2_ab.py 2>&1 | tee $OUT/paged_v2_ab.txt
python3 benchmarks/results/ttft_gate_act_h200/gate_act_ab.py 2>&1 | grep -v -i warn | tee $OUT/gate_act_ab.txt
