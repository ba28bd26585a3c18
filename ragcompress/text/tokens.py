"""Token pruning by self-information under a small causal LM (the LLMLingua idea).

A token the LM predicts easily (low surprisal, ``-log p(token | preceding text)``) carries
little information and is the first to go. Tokens of all passages compete for one budget and
the kept ones are decoded in their original order. Long passages are scored in windows of
``window`` tokens, each conditioned on the ``context`` tokens before it, so memory stays
bounded (logits of one window at a time).

Two registered classes, because the conditioning changes what the method is:
``tokens`` scores each passage on its own (query-agnostic: usable before the KV cache), and
``tokens-query`` scores it with the question prepended (LongLLMLingua's question-conditioned
scoring: the LM reads the passage knowing what is asked, which changes what it finds
predictable; query-aware, so it runs on text before the cache, never in it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ragcompress.registry import register
from ragcompress.text.base import TextCompressor, TokenCounter
from ragcompress.types import Budget, Passage

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["QueryTokenPruner", "TokenPruner", "surprisal"]


def surprisal(
    lm: PreTrainedModel, ids: list[int], prefix: list[int], window: int, context: int
) -> np.ndarray:
    """``-log p(ids[t] | prefix, ids[:t])`` in nats for every t, shape (len(ids),).

    ``prefix`` must be non-empty (it predicts the first token). Each window sees ``prefix``
    plus the ``context`` tokens before it, never the whole passage.
    """
    import numpy as np
    import torch

    out = np.empty(len(ids), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(ids), window):
            chunk = ids[start : start + window]
            inp = prefix + ids[max(0, start - context) : start] + chunk
            x = torch.tensor([inp], dtype=torch.long, device=lm.device)
            # The logits that predict the chunk sit one position before it, so keep len+1 and
            # drop the last one (which predicts the token after the chunk).
            logits = lm(input_ids=x, logits_to_keep=len(chunk) + 1).logits[0, :-1].float()
            logp = torch.log_softmax(logits, dim=-1)  # (len(chunk), vocab)
            target = torch.tensor(chunk, dtype=torch.long, device=lm.device)[:, None]
            out[start : start + len(chunk)] = (-logp.gather(1, target)[:, 0]).cpu().numpy()
    return out


@register("tokens")
@dataclass
class TokenPruner(TextCompressor):
    """Keep the highest-surprisal tokens within the budget.

    ``model``: the scoring LM (alias, path or HF id; None: the packaged reader), which should
    share the reader's tokenizer so that kept tokens decode back to text faithfully.
    """

    query_aware: ClassVar[bool] = False

    model: str | None = None
    device: str | None = None
    window: int = 256
    context: int = 64
    _lm: Any = field(default=None, init=False, repr=False, compare=False)
    _tok: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1 or self.context < 0:
            raise ValueError(f"window must be >= 1 and context >= 0, got {self.window}, {self.context}")
        if self.tokenizer is None and self.model is not None:
            self._counter = TokenCounter(self.model)  # budgets count the scoring model's tokens

    @classmethod
    def from_model(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **kwargs: Any) -> Any:
        """Wrap an already loaded LM and tokenizer (budgets are then counted with that tokenizer)."""
        obj = cls(**kwargs)
        obj._lm, obj._tok = model, tokenizer
        if obj.tokenizer is None:
            obj._counter = TokenCounter.of(tokenizer)
        return obj

    def _load(self) -> tuple[Any, Any]:
        if self._lm is None:
            from ragcompress.models.load import load_reader

            self._lm, self._tok = load_reader(self.model, self.device)
        return self._lm, self._tok

    def _prefix(self, tok: PreTrainedTokenizerBase, query: str) -> list[int]:
        """Ids every window starts with: a start token, so the first token has a prediction."""
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        return [int(start)] if start is not None else list(tok("\n", add_special_tokens=False)["input_ids"])

    def _compress(
        self, passages: list[Passage], query: str, budget: Budget, tokens: list[int]
    ) -> list[Passage]:
        import numpy as np

        target = budget.target(sum(tokens))
        if sum(tokens) <= target:
            return [
                p.with_text(p.text, tokens_before=n, tokens_after=n)
                for p, n in zip(passages, tokens, strict=False)
            ]
        lm, tok = self._load()
        prefix = self._prefix(tok, query)
        ids = [list(tok(p.text, add_special_tokens=False)["input_ids"]) for p in passages]
        scores = np.concatenate([surprisal(lm, x, prefix, self.window, self.context) for x in ids])
        owner = np.concatenate([np.full(len(x), i) for i, x in enumerate(ids)])
        # Rank once (stable: ties keep the earlier token); keep the top k, shrinking k until the
        # re-tokenized text fits, since decoded pieces can re-merge differently.
        order = np.argsort(-scores, kind="stable")
        offsets = np.cumsum([0, *(len(x) for x in ids)])
        k = min(target, len(order))
        while True:
            keep = np.zeros(len(order), dtype=bool)
            keep[order[:k]] = True
            texts = [
                tok.decode([t for t, m in zip(x, keep[a:b], strict=False) if m]).replace("\ufffd", "").strip()
                for x, a, b in zip(ids, offsets[:-1], offsets[1:], strict=False)
            ]
            after = self._counter.many(texts)
            excess = sum(after) - target
            if excess <= 0 or k == 0:
                break
            k = max(0, k - excess)
        out: list[Passage] = []
        for i, p in enumerate(passages):
            if not texts[i]:
                self._drop(p, "no token kept within the budget")
                continue
            n_kept = int(keep[owner == i].sum())
            out.append(
                p.with_text(texts[i], tokens_before=tokens[i], tokens_after=after[i], kept_tokens=n_kept)
            )
        return out


@register("tokens-query")
@dataclass
class QueryTokenPruner(TokenPruner):
    """Like ``tokens``, but surprisal is computed with the question prepended (query-aware)."""

    query_aware: ClassVar[bool] = True

    def _compress(
        self, passages: list[Passage], query: str, budget: Budget, tokens: list[int]
    ) -> list[Passage]:
        if not query.strip():
            raise ValueError("'tokens-query' conditions on the query and needs a non-empty one; use 'tokens'")
        return super()._compress(passages, query, budget, tokens)

    def _prefix(self, tok: PreTrainedTokenizerBase, query: str) -> list[int]:
        return super()._prefix(tok, query) + list(
            tok(f"Question: {query.strip()}\nRelevant text:", add_special_tokens=False)["input_ids"]
        )
