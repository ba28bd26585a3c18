#!/usr/bin/env bash
# Third device call: the pools' GPU tests and int4_insert.py after the kernel's fixes (no bench).
bash benchmarks/results/ttft_pool_quant_h200/pool_tests.sh .
