# Sourced by a device call's script, from the repository root on the device: the test tokenizer,
# no model hub, unbuffered output, and the carried wheels (.devcarry/wheels: pydantic, sentencex,
# gguf... which the device's image lacks) installed under /tmp/pyd for PYTHONPATH.
export RAGCOMPRESS_TEST_TOKENIZER=$PWD/.devcarry/tok HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
for w in .devcarry/wheels/*.whl; do pip install -q --no-deps -t /tmp/pyd "$w" >/dev/null 2>&1; done
