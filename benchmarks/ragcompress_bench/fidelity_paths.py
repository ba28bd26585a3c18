"""The contenders of ``ragcompress bench fidelity`` and how one is measured on one question: the
full prefill (:class:`FullPath`) and each KV assembly mode over plain or compressed chunks
(:class:`KVPath`, built by :func:`kv_path`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragcompress_bench.contender import Unavailable
from ragcompress_bench.kv_contenders import FULL

if TYPE_CHECKING:
    import torch

    from ragcompress.generate import Answer, Generator
    from ragcompress_bench.data import QAExample

__all__ = [
    "COMPRESSED",
    "DEFAULT_CONTENDERS",
    "FidelityContender",
    "FullPath",
    "KVPath",
    "along_reference",
    "kl_to_reference",
    "kv_path",
    "measure",
    "parse_contenders",
]

# The 1/8-bytes point: evict 60% of each chunk's tokens, int4 with 64-wide groups.
COMPRESSED: tuple[dict[str, Any], ...] = (
    {"name": "kvzip", "ratio": 0.6},
    {"name": "quantize", "bits": 4, "group_size": 64},
)
_MODES = ("chunks", "ape", "blend", "blend_question", "blend_link")
_SELECTIVE = ("blend", "blend_question", "blend_link")
_BASE = ("chunks", "ape", "blend:0.05", "blend:0.15", "blend:0.3")
DEFAULT_CONTENDERS = ",".join(c for b in _BASE for c in (b, b + "+kvzip"))


@dataclass(frozen=True, slots=True)
class FidelityContender:
    """One row family: ``assembly`` is the spec passed to the KV path (None: the full prefill);
    ``presses`` compress each chunk before it is stored."""

    label: str
    assembly: dict[str, Any] | None
    presses: tuple[dict[str, Any], ...] = ()


def parse_contenders(text: str) -> list[FidelityContender]:
    """The full prefill, then each ``MODE[:RECOMPUTE][/FIELD=VALUE...][+kvzip]`` of ``text``
    (empty or ``all``: :data:`DEFAULT_CONTENDERS`). A selective mode (``blend``, ``blend_question``,
    ``blend_link``) alone means it at 0.15; ``/FIELD=VALUE`` sets one more field of the mode's
    spec, checked here by building it (e.g. ``blend_question:0.15/draft_tokens=4``)."""
    out = [FidelityContender(FULL, None)]
    for item in (DEFAULT_CONTENDERS if text.strip() in ("", "all") else text).split(","):
        name = item.strip().lower().replace(" ", "")
        if not name or name in ("full", "fullprefill"):
            continue
        base, plus, press = name.partition("+")
        if plus and press != "kvzip":
            raise ValueError(f"--contenders: {item.strip()!r}: the only press suffix is '+kvzip'")
        base, *assigned = base.split("/")
        mode, colon, share = base.partition(":")
        mode = "chunks" if mode == "concat" else mode
        if mode not in _MODES:
            raise ValueError(f"--contenders: unknown mode {mode!r} in {item.strip()!r}; choose from {_MODES}")
        assembly: dict[str, Any] = {"name": "concat" if mode == "chunks" else mode}
        label = mode
        if mode in _SELECTIVE:
            try:
                r = float(share) if colon else 0.15
            except ValueError:
                raise ValueError(
                    f"--contenders: {item.strip()!r}: recompute share {share!r} is not a number"
                ) from None
            if not 0.0 <= r <= 1.0:
                raise ValueError(
                    f"--contenders: {item.strip()!r}: recompute share must be in [0, 1], got {r}"
                )
            assembly["recompute"], label = r, f"{mode}:{r:g}"
        elif colon:
            raise ValueError(
                f"--contenders: {item.strip()!r}: only the selective modes "
                f"({', '.join(_SELECTIVE)}) take a recompute share"
            )
        if assigned:
            from ragcompress.kv.assembly import build_assembly

            assembly.update(_fields(item.strip(), assigned))
            label = "/".join([label, *assigned])
            try:
                build_assembly(assembly)
            except ValueError as err:
                raise ValueError(f"--contenders: {item.strip()!r}: {err}") from None
        c = FidelityContender(label + ("+kvzip" if plus else ""), assembly, COMPRESSED if plus else ())
        if c.label not in {o.label for o in out}:
            out.append(c)
    return out


def _fields(item: str, assigned: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs of a contender (``/draft_tokens=4``) as spec fields: an int, a float,
    or None (``none``/``null``); the mode checks them when the spec is built."""
    out: dict[str, Any] = {}
    for pair in assigned:
        key, eq, text = pair.partition("=")
        if not key or not eq or not text:
            raise ValueError(f"--contenders: {item!r}: {pair!r} is not FIELD=VALUE")
        if text in ("none", "null"):
            out[key] = None
            continue
        try:
            out[key] = int(text) if text.lstrip("-").isdigit() else float(text)
        except ValueError:
            raise ValueError(f"--contenders: {item!r}: {key}={text!r} is not a number or none") from None
    return out


@dataclass
class FullPath:
    """The reference: the whole prompt prefilled at once, as :meth:`Generator.generate` does."""

    gen: Generator

    def answer(self, question: str, passages: list[str]) -> Answer:
        return self.gen.generate(question, passages)

    def logprobs(self, question: str, passages: list[str], target: list[int]) -> torch.Tensor:
        """(len(target), vocab) log-probabilities of each target token after the prompt and the
        targets before it: one forward over prompt + target, logits kept only where needed (a
        10K-token prompt's full logits over a 150K vocabulary would take gigabytes)."""
        import torch

        ids = self.gen.layout.prompt_ids(passages, question)
        with torch.inference_mode():
            out = self.gen.lm(
                input_ids=torch.tensor([ids + target], device=self.gen.lm.device),
                logits_to_keep=len(target) + 1,
            )
        return out.logits[0, : len(target)].float().log_softmax(-1)

    def logprobs_many(
        self, question: str, passages: list[str], targets: list[list[int]]
    ) -> list[torch.Tensor]:
        """:meth:`logprobs` of each target, the prompt prefilled once: each target then runs on a
        copy of the prompt's cache (on CPU the prompt is most of the cost; the numbers equal
        separate passes up to kernel order)."""
        import copy

        import torch

        from ragcompress.models.compat import cache_kwargs, output_cache

        ids = self.gen.layout.prompt_ids(passages, question)
        dev = self.gen.lm.device
        with torch.inference_mode():
            out = self.gen.lm(input_ids=torch.tensor([ids], device=dev), use_cache=True, logits_to_keep=1)
            first = out.logits[0, -1:].float().log_softmax(-1)  # (1, vocab): predicts target[0]
            results = []
            for target in targets:
                if len(target) < 2:
                    results.append(first[: len(target)])
                    continue
                n = len(ids)
                rest = self.gen.lm(
                    input_ids=torch.tensor([target[:-1]], device=dev),
                    **cache_kwargs(self.gen.lm, copy.deepcopy(output_cache(out))),
                    cache_position=torch.arange(n, n + len(target) - 1, device=dev),
                    use_cache=True,
                )
                results.append(torch.cat([first, rest.logits[0].float().log_softmax(-1)]))
        return results

    def recompute(self, answer: Answer) -> float:
        return 1.0  # every context token is computed for the request


@dataclass
class KVPath:
    """The KV path of one contender: a :class:`~ragcompress.kv.answer.KVAnswerer` with its presses
    and assembly mode. Built by :func:`kv_path`, the one place that knows which KV interface this
    build has."""

    answerer: Any
    assembled: bool  # the answerer takes the assembly spec itself (ragcompress.kv.assembly exists)

    @property
    def gen(self) -> Generator:
        return self.answerer.generator  # type: ignore[no-any-return]

    def answer(self, question: str, passages: list[str]) -> Answer:
        # chunks are precomputed in a real deployment: encode first, so TTFT is a warm request's
        self.answerer.cache.get_or_encode(passages)
        return self.answerer.answer(question, passages)  # type: ignore[no-any-return]

    def logprobs(self, question: str, passages: list[str], target: list[int]) -> torch.Tensor:
        if self.assembled:
            return self.answerer.teacher_forced_logprobs(question, passages, target)  # type: ignore[no-any-return]
        # concat before assembly modes existed: teacher forcing over the assembled chunks
        from ragcompress.kv.context import chunk_context
        from ragcompress_bench.kv import teacher_forced
        from ragcompress_bench.kv_contenders import KVSession

        gen = self.gen
        chunks, _ = self.answerer.cache.get_or_encode(passages)
        cache, pos = chunk_context(gen.lm, gen.layout, chunks)
        return teacher_forced(KVSession(gen), cache, pos, gen.layout.question_ids(question), target)  # type: ignore[no-any-return]

    def logprobs_many(
        self, question: str, passages: list[str], targets: list[list[int]]
    ) -> list[torch.Tensor]:
        """:meth:`logprobs` of each target from one prepared context (a blend's probe and partial
        forward run once; each target is teacher-forced on a copy of it), as
        ``teacher_forced_logprobs`` prepares it."""
        if not self.assembled:
            return [self.logprobs(question, passages, t) for t in targets]
        import copy

        from ragcompress.kv.context import prepare_context, teacher_forced

        gen = self.gen
        chunks, _ = self.answerer.cache.get_or_encode(passages)
        ids = gen.layout.question_ids(question)
        ctx = prepare_context(gen.lm, gen.layout, chunks, ids, self.answerer.assembly)
        return [teacher_forced(gen.lm, copy.deepcopy(ctx), ids, t) for t in targets]

    def recompute(self, answer: Answer) -> float:
        return float(answer.stats.extra.get("recompute", 0.0))


def kv_path(
    gen: Generator, contender: FidelityContender, memory_bytes: int = 256 << 20, store: Any = None
) -> KVPath:
    """The adapter to the KV path: ``KVAnswerer.from_generator(..., presses, assembly)`` where
    ``ragcompress.kv.assembly`` exists; else today's ``concat`` (other modes: :class:`Unavailable`).
    ``store``: shared by the contenders with the same presses (a chunk is keyed by its content,
    model and presses, never by the mode, so each passage is encoded once per press set); None: a
    memory store of this contender's own."""
    from ragcompress.kv.answer import KVAnswerer

    assert contender.assembly is not None
    try:
        from ragcompress.kv.assembly import available_assemblies  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:
        if contender.assembly["name"] != "concat":
            raise Unavailable(
                f"mode {contender.assembly['name']!r} needs ragcompress.kv.assembly (not in this build)"
            ) from None
        answerer = KVAnswerer.from_generator(
            gen, presses=contender.presses, memory_bytes=memory_bytes, store=store
        )
        return KVPath(answerer, assembled=False)
    if contender.assembly["name"] not in available_assemblies():
        raise Unavailable(f"assembly mode {contender.assembly['name']!r} is not registered")
    answerer = KVAnswerer.from_generator(
        gen, presses=contender.presses, memory_bytes=memory_bytes, assembly=contender.assembly, store=store
    )
    return KVPath(answerer, assembled=True)


#: How many of the full prefill's most likely tokens per answer position the journal keeps for
#: the KL column (the rest of the vocabulary is one bucket).
TOP = 32


def measure(
    path: FullPath | KVPath, ex: QAExample, reference: list[int] | None, ref_top: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One contender on one question: its greedy answer, the gold answer's mean log-probability
    per token and, along the ``reference`` greedy tokens (None: this answer's own, and this is the
    reference), the share of them this context ranks first and the KL divergence from the
    reference's next-token distributions there (:func:`kl_to_reference`; None when the reference
    answered nothing). The reference's record keeps its distributions' top tokens (``ref_top``)."""
    import torch

    passages = [p.text for p in ex.passages]
    ans = path.answer(ex.question, passages)
    gold = list(path.gen.tokenizer(ex.answers[0], add_special_tokens=False)["input_ids"])
    ref = list(ans.token_ids) if reference is None else reference
    lp, ref_lp = path.logprobs_many(ex.question, passages, [gold, ref])
    agree = None
    if ref:
        top = ref_lp.argmax(-1).cpu()
        agree = float((top == torch.tensor(ref)).float().mean())
    out = {
        "text": ans.text,
        "tokens": list(ans.token_ids),
        "gold_ll": float(lp.gather(1, torch.tensor(gold, device=lp.device)[:, None]).mean()),
        "next_token_agree": agree,
        "ttft_ms": ans.stats.ttft_ms,
        "recompute": path.recompute(ans),
    }
    return out | along_reference(ref_lp, ref_top)


def along_reference(ref_lp: torch.Tensor, ref_top: dict[str, Any] | None) -> dict[str, Any]:
    """The reference's own record (``ref_top`` None): its top :data:`TOP` tokens per position of
    ``ref_lp`` (len(reference), vocab) and a KL of 0; another contender's: its KL from them."""
    if ref_top is None:
        if not len(ref_lp):
            return {"ref_top": None, "kl_full": None}
        best = ref_lp.float().topk(min(TOP, ref_lp.shape[-1]), dim=-1)
        return {"ref_top": {"ids": best.indices.tolist(), "lp": best.values.tolist()}, "kl_full": 0.0}
    return {"kl_full": kl_to_reference(ref_top, ref_lp)}


def kl_to_reference(ref_top: dict[str, Any] | None, lp: torch.Tensor) -> float | None:
    """Mean over the reference answer's positions of KL(reference ‖ this context), in nats, over
    the reference's top tokens plus one bucket for the rest of the vocabulary (a coarsening, so
    a lower bound of the full KL that misses only what the reference gives < its top tokens'
    leftover mass). ``lp`` (len(reference), vocab) this context's log-probabilities there."""
    import torch

    if ref_top is None or not len(lp):
        return None
    ids = torch.tensor(ref_top["ids"], device=lp.device)
    p_lp = torch.tensor(ref_top["lp"], device=lp.device, dtype=torch.float32)
    q_lp = lp.float().gather(1, ids)
    p_rest = (1 - p_lp.exp().sum(-1)).clamp_min(1e-12)
    q_rest = (1 - q_lp.exp().sum(-1)).clamp_min(1e-12)
    kl = (p_lp.exp() * (p_lp - q_lp)).sum(-1) + p_rest * (p_rest.log() - q_rest.log())
    return float(kl.clamp_min(0).mean())
