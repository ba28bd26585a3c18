"""The one pipeline spec (issue #11): YAML, CLI flags and Python build the same checked
:class:`PipelineSpec`; bad keys and values fail naming the key path and where they came from; each
spec section and flag accepts only its kind of method."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import ragcompress
from ragcompress.adapters import text_compressor
from ragcompress.cli.app import main
from ragcompress.cli.pipeline_args import add_pipeline_args, spec_from_args
from ragcompress.generate import Generator
from ragcompress.pipeline import KVSpec, Pipeline, PipelineError, PipelineSpec, load_spec
from ragcompress.registry import SpecError, build, spec_of

from .test_pipeline import PASSAGES, QUESTION

# (YAML text, the error after "bad.yaml: ")
BAD_YAML = [
    ("kv:\n  cache_dirr: /tmp/chunks\n", "kv.cache_dirr: unknown key"),
    ("retrievr: {k: 2}\n", "retrievr: unknown key"),
    ("generator: {model: x, temperature: 0.2}\n", "generator.temperature: unknown key"),
    ("retriever: {k: three}\n", "retriever.k: Input should be a valid integer, got 'three'"),
    ("retriever: {k: -3}\n", "retriever.k: out of range: must be >= 1, got -3"),
    ("ratio: 1.5\n", "ratio: out of range: must be <= 1, got 1.5"),
    (
        "compressors: [{name: sentences, ratio: half}]\n",
        "compressors[0].ratio: Input should be a valid number",
    ),
    ("compressors: [{name: random, ratio: 1.5}]\n", "compressors[0].ratio: out of range: must be <= 1"),
    ("compressors: [{name: random, sead: 1}]\n", "compressors[0].sead: unknown key; 'random' takes"),
    ("kv: {memory_bytes: lots}\n", "kv.memory_bytes: Input should be a valid integer"),
    ("kv: {presses: [{name: quantize, bits: '8'}]}\n", "kv.presses[0].bits: Input should be a valid integer"),
    (
        "kv: {presses: [{name: window, sinks: true}]}\n",
        "kv.presses[0].sinks: Input should be a valid integer",
    ),
    (
        "kv: {assembly: {name: blend, recompute: lots}}\n",
        "kv.assembly.recompute: Input should be a valid number",
    ),
    ("kv: {fast_capacity: 0}\n", "kv.fast_capacity: out of range: must be >= 1, got 0"),
    ("kv: {fast_placement: paged}\n", "kv: fast_placement places chunks on the fast engine"),
    ("kv: {fast_batch: 8}\n", "kv: fast_batch batches questions on the fast engine"),
    ("kv: {fast_capacity: 512, fast_batch: 0}\n", "kv.fast_batch: out of range: must be >= 1, got 0"),
    (
        "kv: {fast_capacity: 512, fast_placement: {name: paged, storage: int3}}\n",
        "kv.fast_placement.storage: Input should be 'model', 'int4' or 'int8'",
    ),
    (
        "kv: {fast_capacity: 512, fast_placement: {name: copy, block_size: 16}}\n",
        "kv.fast_placement: block_size: only for the paged placement",
    ),
    ("kv: {assembly: 3}\n", "kv.assembly: assembly must be a spec dict"),
    ("compressors: 3\n", "compressors: expected a spec or a list of specs, got int"),
]


@pytest.mark.parametrize(("text", "message"), BAD_YAML)
def test_bad_yaml_names_the_file_and_key_in_python_and_cli(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PipelineError) as info:
        Pipeline.from_yaml(path)  # fails before any model loads
    assert str(info.value).startswith(f"bad.yaml: {message}"), str(info.value)
    with pytest.raises(PipelineError) as again:
        load_spec(path)
    assert str(again.value) == str(info.value)
    assert main(["demo", "--pipeline", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"ragcompress demo: error: bad.yaml: {message}"), err


def test_python_spec_errors_name_the_key() -> None:
    with pytest.raises(PipelineError, match=r"^kv\.cache_dirr: unknown key$"):
        Pipeline.from_spec({"kv": {"cache_dirr": "/tmp"}})
    with pytest.raises(SpecError, match=r"^cache_dirr: unknown key$"):
        KVSpec(cache_dirr="/tmp")  # type: ignore[call-arg]
    with pytest.raises(SpecError, match=r"^retriever\.k: out of range: must be >= 1, got 0$"):
        PipelineSpec(retriever={"k": 0})  # type: ignore[arg-type,call-arg]
    with pytest.raises(PipelineError, match=r"^kv=: presses\[0\]: 'sentences' is a text compressor"):
        Pipeline.from_spec({}, kv={"presses": ["sentences"]})
    with pytest.raises(SpecError, match="k: passages retrieved per question"):
        Pipeline(generator=Generator(), k=0)


@pytest.mark.parametrize(
    ("spec", "kind", "named", "other"),
    [
        ({"name": "knorm"}, "text", "'knorm' is a KV press, not a text compressor", "text compressors: "),
        ({"name": "sentences"}, "press", "'sentences' is a text compressor, not a KV press", "KV presses: "),
        ({"name": "blend"}, "press", "'blend' is an assembly mode, not a KV press", "KV presses: "),
        (
            {"name": "quantize"},
            "assembly",
            "'quantize' is a KV press, not an assembly mode",
            "assembly modes: ",
        ),
    ],
)
def test_a_method_of_another_kind_fails_naming_both_kinds(spec, kind, named, other) -> None:
    with pytest.raises(SpecError) as info:
        build(spec, kind=kind)
    message = str(info.value)
    assert message.startswith(named) and other in message
    # only the names of the kind asked for are listed
    listed = message.split(other, 1)[1].split(", ")
    assert listed == ragcompress.available(kind)


def test_each_section_and_flag_takes_only_its_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(
        PipelineError, match=r"^compressors\[0\]: 'knorm' is a KV press, not a text compressor"
    ):
        Pipeline.from_spec({"compressors": [{"name": "knorm"}]})
    with pytest.raises(
        PipelineError, match=r"^kv\.presses\[0\]: 'tokens' is a text compressor, not a KV press"
    ):
        Pipeline.from_spec({"kv": {"presses": [{"name": "tokens"}]}})
    with pytest.raises(SpecError, match="'knorm' is a KV press, not a text compressor"):
        text_compressor("knorm")  # the LangChain / LlamaIndex adapters' compressor= argument
    with pytest.raises(SpecError, match=r"^steps\[1\]: 'quantize' is a KV press"):
        build({"name": "chain", "steps": [{"name": "random"}, {"name": "quantize"}]})
    kinds = {k: set(ragcompress.available(k)) for k in ("text", "press", "assembly")}
    assert not kinds["text"] & kinds["press"] and not kinds["press"] & kinds["assembly"]
    assert "knorm" in kinds["press"] and "sentences" in kinds["text"] and "blend" in kinds["assembly"]
    # on the command line, before any model or index is touched
    assert main(["demo", "--compressor", "knorm"]) == 2
    assert "error: --compressor: 'knorm' is a KV press, not a text compressor" in capsys.readouterr().err


def test_registered_specs_are_checked_by_type_and_range() -> None:
    with pytest.raises(SpecError, match=r"^ratio: Input should be a valid number, got 'half'$"):
        build({"name": "sentences", "ratio": "half"})
    with pytest.raises(SpecError, match=r"^ratio: out of range: must be <= 1, got 1\.5$"):
        build({"name": "tokens", "ratio": 1.5})
    with pytest.raises(SpecError, match=r"^\[1\]\.seed: Input should be a valid integer"):
        build([{"name": "random"}, {"name": "random", "seed": 0.5}])
    with pytest.raises(SpecError, match=r"ratio.*\[0, 1\)"):  # a press evicts a share in [0, 1)
        build({"name": "knorm", "ratio": 1.0}, kind="press")
    # a ValueError (and a TypeError, for callers that caught bad parameters as one)
    with pytest.raises(ValueError):
        build({"name": "random", "ratio": "x"})
    with pytest.raises(TypeError):
        build({"name": "random", "nope": 1})


NEED_ARGUMENTS = {"chain", "compose", "lowrank"}  # no default spec: steps, presses, a basis file


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (k, n)
        for k in ("text", "press", "assembly")
        for n in ragcompress.available(k)
        if n not in NEED_ARGUMENTS
    ],
)
def test_every_default_spec_passes_its_own_check(kind: str, name: str) -> None:
    # the type hints the specs are checked against agree with the defaults the classes ship
    obj = build({"name": name}, kind=kind)
    assert spec_of(build(spec_of(obj), kind=kind)) == spec_of(obj)


FULL_YAML = """\
name: mine
retriever: {k: 2, embedder: all-minilm-l6-v2}
compressors:
  - {name: random, ratio: 0.6, seed: 3}
generator: {model: smollm2-135m-instruct, max_new_tokens: 5, dtype: float32}
ratio: 0.8
kv:
  presses: [{name: quantize, bits: 8}]
  assembly: {name: ape, scale: 0.9}
"""
FLAGS = [
    "--k", "2",
    "--compressor", '{"name": "random", "ratio": 0.6, "seed": 3}',
    "--reader", "smollm2-135m-instruct",
    "--max-new-tokens", "5",
    "--dtype", "float32",
    "--ratio", "0.8",
    "--kv",
    "--press", '[{"name": "quantize", "bits": 8}]',
    "--assembly", '{"name": "ape", "scale": 0.9}',
]  # fmt: skip


def test_the_same_spec_from_yaml_and_from_flags_builds_the_same_pipeline(
    tmp_path: Path, tiny_llama, tokenizer
) -> None:
    full = tmp_path / "full.yaml"
    full.write_text(FULL_YAML, encoding="utf-8")
    bare = tmp_path / "bare.yaml"
    bare.write_text("name: mine\nretriever: {embedder: all-minilm-l6-v2}\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_pipeline_args(parser, kv=True)
    from_flags = spec_from_args(parser.parse_args(["--pipeline", str(bare), *FLAGS]))
    from_yaml = load_spec(full)
    assert from_flags == from_yaml
    assert from_yaml.kv is not None and from_yaml.kv.presses == (
        {"name": "quantize", "bits": 8, "group_size": 32},
    )

    gen = Generator.from_model(tiny_llama, tokenizer, max_new_tokens=4)
    a, b = (Pipeline.build(s, generator=gen) for s in (from_yaml, from_flags))
    assert (a.k, a.budget, a.name) == (b.k, b.budget, b.name) == (2, ragcompress.Budget(ratio=0.8), "mine")
    assert spec_of(a.compressor) == spec_of(b.compressor) == {**from_yaml.compressors[0], "ratio": 0.6}
    assert a.kv.assembly.spec() == b.kv.assembly.spec() == {"name": "ape", "temperature": 1.0, "scale": 0.9}
    ra, rb = a.run(QUESTION, PASSAGES), b.run(QUESTION, PASSAGES)
    assert ra.answer == rb.answer and [p.text for p in ra.passages] == [p.text for p in rb.passages]
    # and the Python form of the same spec
    assert PipelineSpec(**__import__("yaml").safe_load(FULL_YAML)) == from_yaml


def test_kv_store_section_builds_the_tiered_store_from_yaml_and_flags(
    tmp_path: Path, tiny_llama, tokenizer
) -> None:
    """``kv.store`` as a mapping of StoreSpec fields reaches the runtime store (YAML and --store
    alike); a bad tier setting is an error of that key."""
    disk = tmp_path / "chunks"
    yaml_path = tmp_path / "tiers.yaml"
    yaml_path.write_text(
        f"name: tiers\nkv:\n  store: {{gpu_bytes: 1000000, disk_dir: {disk}}}\n", encoding="utf-8"
    )
    spec = load_spec(yaml_path)
    parser = argparse.ArgumentParser()
    add_pipeline_args(parser, kv=True)
    flags = [
        "--pipeline",
        str(yaml_path),
        "--kv",
        "--store",
        f'{{"gpu_bytes": 1000000, "disk_dir": "{disk}"}}',
    ]
    assert spec_from_args(parser.parse_args(flags)) == spec
    gen = Generator.from_model(tiny_llama, tokenizer, max_new_tokens=4)
    pipe = Pipeline.build(spec, generator=gen)
    store = pipe.kv.cache.store
    assert [name for name, _ in store.tiers] == ["gpu", "disk"]
    pipe.run(QUESTION, PASSAGES)
    assert any(disk.rglob("*")), "chunks reach the disk tier"

    yaml_path.write_text("name: tiers\nkv:\n  store: {gpu_bytes: -1}\n", encoding="utf-8")
    with pytest.raises(PipelineError, match=r"tiers\.yaml: kv\.store: .*gpu_bytes"):
        load_spec(yaml_path)
    with pytest.raises(SpecError, match=r"kv\.store: .*unknown store setting.*gpu_byte"):
        PipelineSpec(kv={"store": {"gpu_byte": 1}})
