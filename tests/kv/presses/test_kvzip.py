"""kvzip inside the encoder: the hooked reconstruction pass matches transformers' own attention
weights, batching and padding change nothing, chains restrict or refuse it as they should."""

from __future__ import annotations

import pytest
import torch

import ragcompress
from ragcompress.generate import Generator
from ragcompress.kv.encode.encoder import ChunkEncoder
from ragcompress.kv.encode.reconstruct import reconstruction_prompt, reconstruction_scores
from ragcompress.kv.presses import kept_count
from ragcompress.models.compat import output_cache
from tests.support.tiny import make_tiny_llama

from ..conftest import PASSAGES

KVZIP = {"name": "kvzip", "ratio": 0.5}


@pytest.fixture(scope="module")
def encoder(tiny_llama, tokenizer) -> ChunkEncoder:
    return ChunkEncoder.from_generator(Generator.from_model(tiny_llama, tokenizer))


def test_hooked_scores_equal_the_attention_of_one_plain_forward(encoder, tiny_llama, tokenizer) -> None:
    """prefix + passage + prompt + passage in one eager forward with output_attentions: the max
    over the reconstruction rows is what the hooked, cache-extending pass computes."""
    prefix = list(encoder.layout.prefix_ids())
    ids = encoder.passage_ids(ragcompress.Passage(PASSAGES[0]))
    prompt = list(tokenizer(ragcompress.build(KVZIP).prompt, add_special_tokens=False)["input_ids"])
    plen, m = len(prefix), len(ids)
    # the same weights built with eager attention: the reference shares no code with the hooks
    eager = make_tiny_llama(len(tokenizer), attn_implementation="eager")
    with torch.inference_mode():
        out = eager(input_ids=torch.tensor([prefix + ids + prompt + ids]), output_attentions=True)
        first = eager(input_ids=torch.tensor([prefix + ids]), use_cache=True)
    want = [a[0, :, plen + m :, plen : plen + m].amax(dim=1) for a in out.attentions]
    got = reconstruction_scores(tiny_llama, output_cache(first), [ids], prompt, plen, m, 0)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g[0], w, atol=1e-5, rtol=1e-4)


def test_batching_and_padding_change_no_kept_token(encoder) -> None:
    press = [ragcompress.build(KVZIP)]
    together = encoder.encode(PASSAGES, press)  # one batch, right-padded to the longest passage
    for text, chunk in zip(PASSAGES, together, strict=True):
        alone = encoder.encode([text], press)[0]
        assert chunk.num_tokens == kept_count(chunk.length, 0.5)
        for a, b in zip(chunk.layers, alone.layers, strict=True):
            (ka, va, pa), (kb, vb, pb) = a.dense(), b.dense()
            assert torch.equal(pa, pb)
            torch.testing.assert_close((ka, va), (kb, vb), atol=1e-5, rtol=1e-5)


def test_chains_restrict_its_scores_to_kept_tokens_and_refuse_mixed_observations(encoder) -> None:
    chain = ragcompress.build([{"name": "knorm", "ratio": 0.3}, KVZIP, {"name": "quantize", "bits": 4}])
    chunks = encoder.encode(PASSAGES, [chain])
    for c in chunks:
        kept = kept_count(kept_count(c.length, 0.3), 0.5)
        assert c.num_tokens == kept and c.nbytes < c.nbytes_fp16 / 4
    assert reconstruction_prompt([chain]) == ragcompress.build(KVZIP).prompt
    mixed = ragcompress.build([{"name": "observed", "ratio": 0.3}, KVZIP])
    with pytest.raises(ValueError, match="cannot mix a reconstruction press"):
        encoder.encode(PASSAGES, [mixed])
    with pytest.raises(ValueError, match="different reconstruction prompts"):
        reconstruction_prompt([ragcompress.build(KVZIP), ragcompress.build({**KVZIP, "prompt": "Again:"})])


def test_keeps_what_the_repetition_looks_at(encoder, tiny_llama, tokenizer) -> None:
    """The kept tokens of each layer and head are the top scores of the reconstruction pass."""
    ids = encoder.passage_ids(ragcompress.Passage(PASSAGES[1]))
    chunk = encoder.encode([PASSAGES[1]], [ragcompress.build(KVZIP)])[0]
    prefix = list(encoder.layout.prefix_ids())
    prompt = list(tokenizer(ragcompress.build(KVZIP).prompt, add_special_tokens=False)["input_ids"])
    with torch.inference_mode():
        first = tiny_llama(input_ids=torch.tensor([prefix + ids]), use_cache=True)
    scores = reconstruction_scores(tiny_llama, output_cache(first), [ids], prompt, len(prefix), len(ids), 0)
    h = chunk.kv_heads
    for layer, s in zip(chunk.layers, scores, strict=True):
        per_kv = s[0].reshape(h, -1, len(ids)).amax(dim=1)
        _, _, pos = layer.dense()
        kept = pos - len(prefix)  # (kv_heads, k) passage offsets
        top = per_kv.topk(kept.shape[1], dim=-1).indices.sort(dim=-1).values
        assert torch.equal(kept, top)
