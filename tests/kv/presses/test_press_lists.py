"""Presses compose one way: a list of presses (``presses=[...]``, YAML ``kv.presses``,
``--press '[...]'``) is the equivalent ``ComposedPress`` — the same chunk, the same key."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

import ragcompress
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.presses import ComposedPress, kept_count
from ragcompress.kv.presses.protocol import build_presses, press_fingerprint
from ragcompress.pipeline.core import Pipeline
from tests.support.tiny import chunks_close

from ..conftest import PASSAGES, QUESTION

WINDOW = {"name": "window", "ratio": 0.2}
OBSERVED = {"name": "observed", "ratio": 0.5}
KNORM = {"name": "knorm", "ratio": 0.25}
KVZIP = {"name": "kvzip", "ratio": 0.5}
QUANTIZE = {"name": "quantize", "bits": 4, "group_size": 8}
# An attention press after an eviction (the chain a plain list used to break), a reconstruction press
# after one, and a quantization after both evictions.
CHAINS: dict[str, list[dict[str, Any]]] = {
    "window-observed": [WINDOW, OBSERVED],
    "knorm-kvzip": [KNORM, KVZIP],
    "window-observed-quantize": [WINDOW, OBSERVED, QUANTIZE],
}


def test_no_presses_build_nothing() -> None:
    assert build_presses(None) is None and build_presses([]) is None and build_presses(()) is None
    assert press_fingerprint([]) == press_fingerprint(None) == "[]"


def test_a_single_press_stays_itself() -> None:
    press = ragcompress.build(WINDOW)
    assert build_presses(press) is press and build_presses([press]) is press
    assert isinstance(build_presses([WINDOW]), type(press))
    one = {press_fingerprint(f) for f in (press, [press], [WINDOW], WINDOW, ComposedPress([press]))}
    assert len(one) == 1


def test_every_form_of_a_chain_has_one_key() -> None:
    a, b, c = (ragcompress.build(s) for s in (WINDOW, OBSERVED, QUANTIZE))
    forms = [
        [a, b, c],
        [WINDOW, OBSERVED, QUANTIZE],
        json.dumps([WINDOW, OBSERVED, QUANTIZE]),
        ComposedPress([a, b, c]),
        [ComposedPress([a, b, c])],
        [a, ComposedPress([b, c])],
        ComposedPress([ComposedPress([a, b]), ComposedPress([c])]),
    ]
    built = [build_presses(f) for f in forms]
    assert all(isinstance(p, ComposedPress) and p.presses == [a, b, c] for p in built)
    assert len({press_fingerprint(f) for f in forms}) == 1
    # the order is part of the compression, so of the key
    assert press_fingerprint([b, a, c]) != press_fingerprint([a, b, c])


def test_a_flat_composition_is_used_as_is() -> None:
    composed = ComposedPress([WINDOW, OBSERVED])
    assert build_presses(composed) is composed and build_presses([composed]) is composed


def test_a_text_compressor_among_presses_names_both_kinds() -> None:
    with pytest.raises(TypeError, match=r"presses item #1 .*'random'.* text compressor, not a KV press"):
        build_presses([WINDOW, {"name": "random"}])


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_a_list_and_its_composition_give_the_same_chunk_and_key(generator, chain) -> None:
    specs = CHAINS[chain]
    listed = KVAnswerer.from_generator(generator, presses=specs)
    composed = KVAnswerer.from_generator(generator, presses=[ComposedPress(list(specs))])
    got, stats = listed.cache.get_or_encode(PASSAGES)
    want, _ = composed.cache.get_or_encode(PASSAGES)
    assert stats.encoded == len(PASSAGES)  # encoded here, not read back from the other answerer
    for g, w in zip(got, want, strict=True):
        assert chunks_close(g, w, atol=0)  # same key and the same stored tensors
        kept = g.length
        for spec in specs:
            kept = kept_count(kept, spec["ratio"]) if "ratio" in spec else kept
        assert g.layers[0].num_tokens == kept < g.length  # both evictions happened
    assert listed.cache.keys(PASSAGES) == composed.cache.keys(PASSAGES)
    assert listed.answer(QUESTION, PASSAGES).token_ids == composed.answer(QUESTION, PASSAGES).token_ids


def test_a_yaml_presses_list_gives_the_composed_key(generator, tmp_path) -> None:
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump({"compressors": [], "kv": {"presses": [WINDOW, OBSERVED]}}))
    pipe = Pipeline.from_yaml(path, generator=generator)
    composed = KVAnswerer.from_generator(generator, presses=[ComposedPress([WINDOW, OBSERVED])])
    assert pipe.kv.cache.keys(PASSAGES) == composed.cache.keys(PASSAGES)
    out = pipe.run(QUESTION, PASSAGES)  # encodes through the composition: no shape error
    assert out.generation.extra["chunks_encoded"] == len(PASSAGES)


def test_a_yaml_single_press_mapping_is_one_press(generator, tmp_path) -> None:
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump({"compressors": [], "kv": {"presses": WINDOW}}))
    pipe = Pipeline.from_yaml(path, generator=generator)
    single = KVAnswerer.from_generator(generator, presses=[WINDOW])
    assert pipe.kv.cache.keys(PASSAGES) == single.cache.keys(PASSAGES)
