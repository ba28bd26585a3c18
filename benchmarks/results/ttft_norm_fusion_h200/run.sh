#!/bin/bash
# One device call: the GPU tests on the new tree, then Gemma 3 12B's time to first token, new
# tree (aa0fa25) and the tree before the norm fusion (318d362, in .devcarry/before), same call.
pip install -q --no-deps -t /tmp/pyd .devcarry/wheels/*.whl
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
python3 -c "import triton.language.extra.cuda as c; print('gdc' , [n for n in dir(c) if 'gdc' in n])"
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu --continue-on-collection-errors tests > $OUT/gpu_tests.txt 2>&1
tail -4 $OUT/gpu_tests.txt
B="bench ttft --shape gemma3-12b --contexts 10240,32768 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none --batches 1 --no-modes --no-host --no-paged --no-stored"
python3 -m ragcompress.cli $B --out $OUT/new > $OUT/new.log 2>&1; tail -12 $OUT/new.log
(cd .devcarry/before && PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd python3 -m ragcompress.cli $B --out $OUT/old > $OUT/old.log 2>&1); tail -12 $OUT/old.log
rm -f $OUT/*/*.png
