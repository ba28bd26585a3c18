#!/usr/bin/env bash
# Fourth device call (2026-12-03, second session): the split kernel in the library, its GPU tests
# and int4_insert.py (before = torch path, after = the kernel of eight one-warp parts a block).
bash benchmarks/results/ttft_pool_quant_h200/pool_tests.sh split_call
