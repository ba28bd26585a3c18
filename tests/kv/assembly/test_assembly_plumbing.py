"""The assembly spec reaches the answerer from the pipeline YAML, the CLI flag and both adapters."""

from __future__ import annotations

import pytest

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.pipeline.core import Pipeline, PipelineError

from ..conftest import PASSAGES, QUESTION

BLEND = {"name": "blend", "recompute": 0.5, "check_layer": 1}


@pytest.fixture()
def generator(tiny_llama, tokenizer):
    return Generator.from_model(tiny_llama, tokenizer, max_new_tokens=4)


def test_pipeline_yaml_kv_assembly(tmp_path, generator):
    spec = tmp_path / "p.yaml"
    spec.write_text("compressors: []\nkv:\n  assembly: {name: blend, recompute: 0.5}\n", encoding="utf-8")
    pipe = Pipeline.from_yaml(spec, generator=generator)
    assert pipe.kv.assembly.spec() == BLEND
    got = pipe.run(QUESTION, PASSAGES)
    assert got.generation.extra["assembly"] == "blend"
    assert got.generation.extra["recompute"] == pytest.approx(0.5, abs=0.05)
    expected = KVAnswerer.from_generator(generator, assembly=BLEND).answer(QUESTION, PASSAGES)
    assert got.answer == expected.text


def test_pipeline_yaml_bad_assembly_names_the_field(tmp_path, generator):
    spec = tmp_path / "bad.yaml"
    spec.write_text("compressors: []\nkv:\n  assembly: {name: blend, recompute: 2}\n", encoding="utf-8")
    with pytest.raises((PipelineError, ValueError), match="recompute"):
        Pipeline.from_yaml(spec, generator=generator)


def test_cli_flag_reaches_the_kv_spec():
    import argparse

    from ragcompress.cli import pipeline_args as cli
    from ragcompress.cli.common import UsageError

    parser = argparse.ArgumentParser()
    cli.add_pipeline_args(parser, kv=True)
    args = parser.parse_args(["--kv", "--assembly", '{"name": "ape", "scale": 0.9}'])
    assert args.assembly == '{"name": "ape", "scale": 0.9}'
    assert cli.spec_from_args(args).kv.assembly == {"name": "ape", "temperature": 1.0, "scale": 0.9}
    with pytest.raises(UsageError, match="--assembly"):
        cli.load_pipeline(parser.parse_args(["--assembly", "ape"]))


def test_langchain_adapter_passes_assembly(generator):
    lc = pytest.importorskip("langchain_ragcompress.kv")
    chain = lc.RagCompressKVChain.from_generator(generator, assembly=BLEND)
    assert chain.answerer.assembly.spec() == BLEND
    docs = [pytest.importorskip("langchain_core.documents").Document(page_content=p) for p in PASSAGES]
    out = chain.invoke({"question": QUESTION, "documents": docs})
    expected = KVAnswerer.from_generator(generator, assembly=BLEND).answer(QUESTION, PASSAGES)
    assert out["answer"] == expected.text


def test_llamaindex_adapter_passes_assembly(generator):
    li = pytest.importorskip("llama_index.postprocessor.ragcompress.kv")
    synth = li.RagCompressKVSynthesizer.from_generator(generator, assembly={"name": "ape"})
    assert synth.answerer.assembly.spec()["name"] == "ape"
