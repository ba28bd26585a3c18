#!/bin/bash
# One device call: the GPU tests the skinny GEMM touches, then skinny_ab.py at 32K.
pip install -q --no-deps -t /tmp/pyd .devcarry/wheels/*.whl 2>/dev/null
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_fast_path_gpu.py tests/gpu/test_fast_window_gpu.py tests/kv/test_fast_steps.py > $OUT/gpu_tests.txt 2>&1
tail -3 $OUT/gpu_tests.txt
python3 benchmarks/results/ttft_skinny_gemm_h200/skinny_ab.py --contexts 32768 2>&1 | grep -v Warn | tee $OUT/skinny_ab.txt
