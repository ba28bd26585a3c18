"""Stored chunks whose digest is valid but whose content no writer of this version makes: a file
written by another version under the same format number, or edited with its unkeyed digest
recomputed. Each must be a ChunkFormatError (a miss, re-encoded), never another exception and
never a chunk served that breaks what assembly trusts."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest
import torch
from safetensors.torch import load, save

from ragcompress.kv import serialize
from ragcompress.kv.chunk import DenseLayer, KVChunk
from ragcompress.kv.key import ChunkKey, tokens_digest
from ragcompress.kv.presses.kvzip import KVzipPress
from ragcompress.kv.presses.quantize import QuantizePress

N, HEADS, DIM, LAYERS = 16, 2, 16, 3


def _chunk(kind: str) -> KVChunk:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (N,), generator=g)
    key = ChunkKey(model="m", layout="l", presses=kind, tokens=tokens_digest(ids.tolist()))
    pos = (torch.arange(N) + 12)[None].expand(HEADS, -1).contiguous()
    layers: list[Any] = []
    for i in range(LAYERS):
        layer: Any = DenseLayer(
            torch.randn(HEADS, N, DIM, generator=g), torch.randn(HEADS, N, DIM, generator=g), pos
        )
        if kind == "kvzip+int4":
            layer = KVzipPress(ratio=0.5)(layer, layer_idx=i, attn=torch.rand(HEADS, 1, N, generator=g))
            layer = QuantizePress(bits=4, group_size=8)(layer, layer_idx=i, attn=None)
        layers.append(layer)
    return KVChunk(layers, ids, 12, N, key, "m")


def _meta_edit(
    field: str, values: list[str]
) -> Callable[[dict[str, str], dict[str, Any], random.Random], None]:
    def edit(meta: dict[str, str], tensors: dict[str, Any], rnd: random.Random) -> None:
        meta[field] = rnd.choice(values)

    return edit


def _layer_meta(meta: dict[str, str], tensors: dict[str, Any], rnd: random.Random) -> None:
    per_layer = json.loads(meta["layer_meta"])
    i = rnd.randrange(len(per_layer))
    if per_layer[i]:
        per_layer[i][rnd.choice(sorted(per_layer[i]))] = rnd.choice(["0", "-3", "x", "3", "float64", "1e9"])
    else:
        per_layer[i] = {"x": "1"}
    meta["layer_meta"] = json.dumps(per_layer)


def _layer_classes(meta: dict[str, str], tensors: dict[str, Any], rnd: random.Random) -> None:
    classes = json.loads(meta["layer_classes"])
    meta["layer_classes"] = json.dumps(
        rnd.choice([classes[:-1], classes + classes[:1], ["nope", *classes[1:]], {"a": 1}])
    )


def _layer_tensor(meta: dict[str, str], tensors: dict[str, Any], rnd: random.Random) -> None:
    name = rnd.choice(sorted(k for k in tensors if k.startswith("layers.")))
    t = tensors[name]
    how = rnd.randrange(5)
    if how == 0:
        del tensors[name]
    elif how == 1 and t.dim() >= 2 and t.shape[1] > 1:
        tensors[name] = t[:, :-1].contiguous()  # one token fewer in one tensor
    elif how == 2 and t.shape[0] > 1:
        tensors[name] = t[:1].contiguous()  # one head
    elif how == 3 and t.shape[-1] > 1:
        tensors[name] = t[..., :-1].contiguous()  # one channel fewer
    else:
        tensors[name] = t.to(
            rnd.choice([torch.float32, torch.int64, torch.uint8, torch.float16, torch.int32])
        )


def _token_ids(meta: dict[str, str], tensors: dict[str, Any], rnd: random.Random) -> None:
    tensors["token_ids"] = rnd.choice([tensors["token_ids"][None], tensors["token_ids"].float()])


EDITS = {
    "base_offset": _meta_edit("base_offset", ["-5", "x", "1e3"]),
    "length": _meta_edit("length", ["0", "-1", "3", str(N + 1), "x", "1000"]),
    "layer_meta": _layer_meta,
    "layer_meta_json": _meta_edit("layer_meta", ["[]", "{}", "null", "[1, 2, 3]", "x"]),
    "layer_classes": _layer_classes,
    "layer_tensor": _layer_tensor,
    "token_ids": _token_ids,
}


def _served_is_consistent(c: KVChunk) -> None:
    assert c.base_offset >= 0 and c.length == c.token_ids.numel() and c.num_tokens <= c.length
    for layer in c.layers:
        k, v, p = layer.dense()  # must not raise: a kernel would meet the same tensors
        assert k.is_floating_point() and k.shape == v.shape
        assert tuple(k.shape) == (c.kv_heads, c.num_tokens, c.head_dim) and tuple(p.shape) == tuple(
            k.shape[:2]
        )


@pytest.mark.parametrize("kind", ["dense", "kvzip+int4"])
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_file_with_a_valid_digest_is_a_miss(kind: str, edit: str) -> None:
    chunk = _chunk(kind)
    blob = serialize.chunk_to_bytes(chunk)
    rnd = random.Random(f"{kind}/{edit}")
    refused = 0
    for _ in range(25):
        meta, tensors = dict(serialize.read_header(blob)), dict(load(blob))
        EDITS[edit](meta, tensors, rnd)
        meta.pop(serialize.DIGEST_FIELD)
        # what anyone can do without the HMAC key
        meta[serialize.DIGEST_FIELD] = serialize._digest(meta, tensors)
        edited = bytes(save(tensors, metadata=meta))
        try:
            got = serialize.chunk_from_bytes(edited, expected=chunk.key)
        except serialize.ChunkFormatError:
            refused += 1
            continue
        _served_is_consistent(got)  # an edit that changes nothing assembly relies on may load
    # the edits do reach the checks (a dense layer has no metadata: a field added to it is ignored)
    assert refused > 0 or (kind, edit) == ("dense", "layer_meta")
