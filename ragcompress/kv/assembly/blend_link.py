"""``blend_link``: selective recompute that repairs the links between passages first.

Independent encoding loses exactly one thing: a passage's tokens never attend to an earlier
passage. That matters when a later passage mentions what an earlier one the question needs says
(the bridge of a multi-hop question: "Velor Danik was born in Brastow." ... "The Osmel River runs
through Brastow."). In a full prefill the later sentence reads the earlier one and carries the
composed fact; the question then finds it in one step. On the invented two-hop set the whole loss
of the chunks is in such questions: with the first hop's passage before the bridge's, a full
prefill answers 14 of 28 and the chunks 8; reversed, both answer 5 of 22
(``benchmarks/results/fidelity_twohop50_30/``).

``blend_question`` ranks tokens by the question's attention over the stale ``concat`` context,
which cannot see such a link: the bridge sentence does not mention the question's entity. This mode
takes ``blend_question``'s scores and re-ranks them by sentences:

1. the ``top_sentences`` sentences whose tokens the question attends to most on average (usually
   the first hop, which names the question's entity);
2. the sentences of *later* passages sharing a token bigram with one of those, bigrams of the
   question itself left out (the bridge: it names what the first hop names, that the question does
   not); these come first;
3. then every other token by its own score, as ``blend_question`` ranks it.

Whole sentences are recomputed so the bridge's composed tokens (its end, the answer next to the
shared name) are repaired together; the share ``recompute`` still caps the tokens, so the last
sentence taken may be cut at its lower-scoring tokens. Sentences end after a token that holds
``.``, ``!``, ``?`` or a newline (a table over the tokenizer's vocabulary, built once per
tokenizer when the answerer is built and kept on the model's device: :meth:`LinkBlend.bind`).
The fast engine ranks the same way: the question probe runs on the engine
(:meth:`QuestionBlend.score_fast`), the re-ranking is a few tensor operations on the device (92 /
342 ms at 10K / 32K on the 8B shape, ``blend_question`` 100 / 345:
``benchmarks/results/ttft_modes_link_h200/``).

Measured on the 1.5B reader (``benchmarks/results/fidelity_twohop50_link/``, 50 two-hop
questions, 15%): on the questions whose first hop comes first, the gold answer loses 0.028
nats/token against a full prefill (``blend_question``: 0.321). The greedy answers are not more
often right (10 of 28 for both; the full prefill 14), and the reversed questions lost answers.
On Disfl-QA (30 questions) it keeps 101% of the full prefill's F1 (``fidelity_disfl_link/``). It
is therefore not the default: a mode to measure on one's own multi-hop data.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragcompress.kv.assembly.base import register_assembly
from ragcompress.kv.assembly.blend_question import QuestionBlend

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from ragcompress.kv.assembly.recompute import SlotMap

__all__ = ["LinkBlend", "link_ranking", "sentence_ends"]

_ENDS_BY_TOKENIZER: weakref.WeakKeyDictionary[Any, torch.Tensor] = weakref.WeakKeyDictionary()
# model -> (its tokenizer's table, that table on the model's device covering its whole vocabulary)
_ENDS_BY_MODEL: weakref.WeakKeyDictionary[Any, tuple[torch.Tensor, torch.Tensor]]
_ENDS_BY_MODEL = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_SENTENCE_END = (".", "!", "?", "\n", "。", "！", "？")


def sentence_ends(tokenizer: Any) -> torch.Tensor:
    """(vocab,) bool: whether a token's text holds a sentence end (``.`` ``!`` ``?``, a newline, or
    their CJK forms); built once per tokenizer (one decode per vocabulary entry)."""
    import torch

    with _LOCK:
        table = _ENDS_BY_TOKENIZER.get(tokenizer)
        if table is None:
            texts = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
            # byte-level vocabularies spell a newline as "Ċ" and sentencepiece ones as "<0x0A>"
            table = torch.tensor(
                [
                    t is not None and (any(c in t for c in _SENTENCE_END) or "Ċ" in t or t == "<0x0A>")
                    for t in texts
                ],
                dtype=torch.bool,
            )
            _ENDS_BY_TOKENIZER[tokenizer] = table
    return table


def link_ranking(
    scores: torch.Tensor,
    tokens: torch.Tensor,
    passages: torch.Tensor,
    ends: torch.Tensor,
    question: Sequence[int],
    top_sentences: int,
) -> torch.Tensor:
    """(slots,) float ranking: later passages' sentences linked to the top sentences first (in
    [4, 5]), the top sentences next ([2, 3]), then every slot by ``scores`` / max ([0, 1]).

    ``scores`` (slots,) float: the question's attention per slot; ``tokens`` (slots,) int64 (-1 where
    no single token is held); ``passages`` (slots,) int64 chunk index (-1: the prefix); ``ends``
    (vocab,) bool: tokens that end a sentence; ``question``: its token ids (their bigrams link
    nothing); ``ends`` covers every id in ``tokens``. Slots of the prefix or with no token are
    never part of a sentence."""
    import torch

    dev = scores.device
    tokens, passages, ends = tokens.to(dev), passages.to(dev), ends.to(dev)
    n = tokens.numel()
    s = scores.float()
    out = s / s.max().clamp_min(1e-12)
    valid = (passages >= 0) & (tokens >= 0)
    if top_sentences == 0 or not bool(valid.any()):
        return out
    # a sentence starts at a passage's first slot and after a token that ends one
    ended = torch.zeros(n, dtype=torch.bool, device=dev)
    ended[1:] = ends[tokens[:-1].clamp_min(0)] & (tokens[:-1] >= 0)
    ended[1:] |= passages[1:] != passages[:-1]
    ended[0] = True
    sid = torch.cumsum(ended.long(), 0) - 1  # (slots,) sentence index
    count = int(sid[-1]) + 1
    mean = torch.zeros(count, device=dev)
    mean = mean.scatter_reduce(0, sid[valid], s[valid], reduce="mean", include_self=False)
    has = torch.zeros(count, dtype=torch.bool, device=dev)
    has[sid[valid]] = True
    mean = mean.masked_fill(~has, float("-inf"))
    top = torch.topk(mean, min(top_sentences, int(has.sum()))).indices  # (t,)
    # bigram codes: slot i and i + 1 in one sentence, both with a token
    q = torch.tensor(list(question), dtype=torch.long, device=dev)
    vocab = max(int(ends.numel()), max(question, default=0) + 1)  # codes of distinct pairs differ
    pair = valid[:-1] & valid[1:] & (sid[:-1] == sid[1:])
    code = torch.where(pair, tokens[:-1] * vocab + tokens[1:], -1)
    q_codes = q[:-1] * vocab + q[1:] if q.numel() > 1 else q[:0]
    linked = torch.zeros(count, dtype=torch.bool, device=dev)
    for t in top.tolist():
        in_t = sid[:-1] == t
        mine = code[in_t & pair]
        mine = mine[~torch.isin(mine, q_codes)]
        if mine.numel() == 0:
            continue
        first = int(passages[:-1][in_t].max())
        later = pair & (passages[:-1] > first) & torch.isin(code, mine)
        linked[sid[:-1][later]] = True
    is_top = torch.zeros(count, dtype=torch.bool, device=dev)
    is_top[top] = True
    linked &= ~is_top
    boost = torch.where(linked, 4.0, torch.where(is_top, 2.0, 0.0))
    return out + torch.where(valid, boost[sid], 0.0)


@register_assembly("blend_link")
@dataclass
class LinkBlend(QuestionBlend):
    """``blend_question``'s fields (``recompute``, ``last_tokens``, ``draft_tokens``), and
    ``top_sentences`` ≥ 0: how many of the question's most attended sentences are followed into the
    later passages that share a bigram with them (0: ``blend_question`` exactly)."""

    top_sentences: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.top_sentences
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValueError(f"blend_link.top_sentences must be an integer ≥ 0, got {t!r}")

    def bind(self, model: PreTrainedModel, tokenizer: Any) -> None:
        """Build (once per tokenizer) the table of tokens that end a sentence and keep it for
        ``model`` on its device, padded to its whole vocabulary (an embedding may be larger than
        the tokenizer), so that a request only reads it."""
        import torch

        table = sentence_ends(tokenizer)
        with _LOCK:
            kept = _ENDS_BY_MODEL.get(model)
            if kept is not None and kept[0] is table:
                return
            vocab = max(int(getattr(model.config, "vocab_size", 0) or 0), table.numel())
            padded = torch.cat([table, table.new_zeros(vocab - table.numel())])
            _ENDS_BY_MODEL[model] = (table, padded.to(model.device))

    def rerank(
        self, model: PreTrainedModel, scores: torch.Tensor, slots: SlotMap, question: Sequence[int]
    ) -> torch.Tensor:
        kept = _ENDS_BY_MODEL.get(model)
        if kept is None:
            raise ValueError(
                "blend_link needs the model's tokenizer to find sentences: build it through "
                "KVAnswerer / FastKVAnswerer or prepare_context, or call bind(model, tokenizer)"
            )
        if slots.passages is None:
            raise ValueError("blend_link needs the slots' passages (SlotMap.passages)")
        return link_ranking(scores, slots.tokens, slots.passages, kept[1], question, self.top_sentences)
