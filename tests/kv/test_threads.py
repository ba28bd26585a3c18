"""One answerer, many threads: answers and stored chunks equal a serial run's, presses that
need attention weights (observed, kvzip, chains of them) included, and the model is never
switched to another attention implementation."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.cache import ChunkCache
from ragcompress.kv.encode.eager import eager_view
from ragcompress.kv.encode.encoder import ChunkEncoder
from ragcompress.kv.store.base import ChunkStore
from ragcompress.kv.store.disk import DiskStore
from ragcompress.kv.store.memory import MemoryStore

from .conftest import PASSAGES

MORE = [
    "The Amazon river carries more water than any other river on Earth.",
    "Honey found in ancient Egyptian tombs was still edible after thousands of years.",
    "Octopuses have three hearts and blue blood that carries oxygen with copper.",
    "The Great Wall of China is not visible from the Moon with the naked eye.",
    "Venus spins backwards compared with most planets of the solar system.",
]
ALL = PASSAGES + MORE
QUESTIONS = ["Which is the tallest?", "What do octopuses have?", "Which river is largest?"]
# 8 threads × 3 requests; overlapping passage sets, so that threads race on the same chunks
REQUESTS = [
    (QUESTIONS[(t + r) % 3], [ALL[(t + r + j) % len(ALL)] for j in range(3)])
    for t in range(8)
    for r in range(3)
]
PRESSES: dict[str, list[Any]] = {
    "plain": [],
    "observed": [{"name": "observed", "ratio": 0.5}],
    "kvzip": [{"name": "kvzip", "ratio": 0.5}],
    "chain": [{"name": "compose", "presses": [{"name": "observed", "ratio": 0.5, "window": 4}, "quantize"]}],
    "kvzip-then-quantize": [{"name": "kvzip", "ratio": 0.5}, {"name": "quantize", "bits": 8}],
}


def answerer(model, tokenizer, store: ChunkStore, presses: list[Any]) -> KVAnswerer:
    gen = Generator.from_model(model, tokenizer, max_new_tokens=4)
    # one passage per encoding batch: a chunk's bytes then do not depend on which request (and
    # which neighbours) encoded it first, so concurrent and serial runs can be compared exactly
    encoder = ChunkEncoder.from_generator(gen, max_batch_tokens=1)
    return KVAnswerer(gen, ChunkCache(encoder, store, presses))


def stored(ans: KVAnswerer) -> dict[str, list[torch.Tensor]]:
    """digest → every tensor of the stored chunk (token ids, then each layer's tensors by name)."""
    out = {}
    for key in ans.cache.keys(ALL):
        chunk = ans.cache.store.lookup(key).chunk
        assert chunk is not None, f"no chunk stored for {key}"
        assert chunk.key == key
        tensors = [chunk.token_ids.cpu()]
        for layer in chunk.layers:
            tensors += [t.cpu() for _, t in sorted(layer.tensors().items())]
        out[key.digest] = tensors
    return out


@pytest.mark.parametrize("store_kind", ["memory", "disk"])
@pytest.mark.parametrize("press", sorted(PRESSES))
def test_concurrent_requests_equal_serial_ones(tiny_llama, tokenizer, tmp_path, press, store_kind) -> None:
    def store(name: str) -> ChunkStore:
        return MemoryStore() if store_kind == "memory" else DiskStore(tmp_path / name)

    serial = answerer(tiny_llama, tokenizer, store("serial"), PRESSES[press])
    want = [serial.answer(q, ps).token_ids for q, ps in REQUESTS]

    shared = answerer(tiny_llama, tokenizer, store("shared"), PRESSES[press])
    start = threading.Barrier(8)

    def worker(t: int) -> list[tuple[int, ...]]:
        start.wait()  # all threads hit the cold cache together
        return [shared.answer(q, ps).token_ids for q, ps in REQUESTS[t * 3 : t * 3 + 3]]

    with ThreadPoolExecutor(8) as pool:
        got = [ids for part in pool.map(worker, range(8)) for ids in part]

    assert got == want
    assert tiny_llama.config._attn_implementation == "sdpa"  # never switched, not even for a moment
    a, b = stored(serial), stored(shared)
    assert a.keys() == b.keys()
    for digest, tensors in a.items():
        assert len(tensors) == len(b[digest])
        for x, y in zip(tensors, b[digest], strict=True):
            assert torch.equal(x, y), f"chunk {digest[:12]} differs from the serial run's"


def test_eager_view_shares_the_weights_and_leaves_the_model_alone(tiny_llama) -> None:
    view = eager_view(tiny_llama)
    assert view is not tiny_llama and view.config._attn_implementation == "eager"
    assert tiny_llama.config._attn_implementation == "sdpa"
    mine = dict(tiny_llama.named_parameters())
    assert all(p is mine[n] for n, p in view.named_parameters())
    ids = torch.tensor([[5, 17, 300, 42, 9]])
    with torch.inference_mode():
        ref = tiny_llama(input_ids=ids).logits
        out = view(input_ids=ids, output_attentions=True)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)
    assert out.attentions is not None and all(a is not None for a in out.attentions)
    fired: list[str] = []
    handle = view.model.layers[0].self_attn.register_forward_hook(lambda *_: fired.append("view"))
    try:
        with torch.inference_mode():
            tiny_llama(input_ids=ids)
        assert fired == []  # a hook on the view does not fire when the model runs
    finally:
        handle.remove()
    assert eager_view(tiny_llama) is view  # built once per model


def test_kept_views_and_fingerprints_do_not_keep_the_model_alive(tokenizer) -> None:
    import gc
    import weakref

    from ragcompress.kv.encode.encoder import prefix_kv
    from ragcompress.kv.fingerprint import model_fingerprint
    from tests.support.tiny import make_tiny_llama

    model = make_tiny_llama(len(tokenizer), seed=5)
    eager_view(model)
    model_fingerprint(model)
    prefix_kv(model, Generator.from_model(model, tokenizer).layout)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
