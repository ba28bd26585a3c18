#!/usr/bin/env bash
# One device call: the placed request's host phases on the tree before this session's host
# changes (e8e187c, extracted under .devcarry/before) and on this tree, one after the other in
# the same call, so that both see the same host. Run from the repository root on the device.
set -u
for w in .devcarry/wheels/*.whl; do pip install -q --no-deps -t /tmp/pyd "$w" >/dev/null 2>&1; done
S=$PWD/benchmarks/results/ttft_placed_host_h200/placed_phases.py
for round in 1; do
  for tree in before after; do
    if [ $tree = before ]; then P=$PWD/.devcarry/before; else P=$PWD; fi
    echo "## round $round, tree: $tree"
    (cd /tmp && PYTHONPATH=$P:$P/benchmarks:/tmp/pyd timeout 60 python3 $S --shape llama3-8b --contexts 10240,131072 2>&1 | grep -E "^\| on( |,)|^## |tracked")
  done
done
