"""FastGenerator: answer questions from chunks held on the GPU, through the static buffer and
captured CUDA graphs.

Per request: :meth:`FastGenerator.load` writes the prefix and chunks into the buffer (one
launch for all dense chunks, one for the quantized ones, keys re-rotated on the way), then
:meth:`FastGenerator.prefill` replays the graph captured for the (batch, question bucket)
shape, then :meth:`FastGenerator.decode_step` replays the one-token graph. Questions are
padded up to their bucket at the end; causality keeps the padding invisible to real tokens
and the first decode step overwrites it.

Off CUDA (or with ``graphs=False``) the step runs without graphs (off CUDA: the
:class:`~ragcompress.kv.fast.eager.EagerStep` with reference attention); that is how the CPU
tests check that the fast path gives the eager generator's greedy tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragcompress.kv.fast.attention import CascadeAttention, ReferenceCascade, default_attention
from ragcompress.kv.fast.buffer import BufferOverflowError, StaticKVBuffer
from ragcompress.kv.fast.fused import default_step
from ragcompress.kv.fast.gate import GatedAttention
from ragcompress.kv.fast.greedy import greedy
from ragcompress.kv.fast.local_layers import LocalLayers
from ragcompress.kv.fast.packed import BufferChunk
from ragcompress.kv.fast.shapes import _Shape, capture, decode_args, new_shape, prefill_args
from ragcompress.kv.fast.step import DecoderStep
from ragcompress.kv.fast.stream import HostStream, stream_batch
from ragcompress.kv.fast.write import write_context

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.fast.tables import Rotaries

__all__ = ["FastGenerator"]


@dataclass(eq=False)
class FastGenerator:
    """Greedy answers from packed chunks over a static KV buffer.

    ``capacity``: context slots (prefix + kept chunk tokens); ``max_question``: longest
    question; ``max_new_tokens``: generation limit; ``max_batch``: concurrent questions;
    ``buckets``: padded question lengths a graph is captured for; ``step``: how a step is
    computed (:class:`~ragcompress.kv.fast.fused.FusedStep` or
    :class:`~ragcompress.kv.fast.eager.EagerStep` over ``model``; by default
    :func:`~ragcompress.kv.fast.fused.default_step` picks the fused one where it runs);
    ``attention``: the cascade (by default flash where it works, else the reference);
    ``stream_group``: layers per host-to-device copy of host-resident chunks
    (:class:`~ragcompress.kv.fast.host.HostChunk`, or stored chunks on the CPU), which stream
    under the question's compute; ``streamer``: how (:class:`~ragcompress.kv.fast.stream.HostStream`,
    copies through a staging area, or :class:`~ragcompress.kv.fast.stream_direct.DirectHostStream`).
    """

    model: Any
    capacity: int
    max_question: int = 64
    max_new_tokens: int = 64
    max_batch: int = 1
    buckets: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    graphs: bool = True
    attention: CascadeAttention | None = None
    step: DecoderStep | None = field(default=None, repr=False)
    stream_group: int = 8
    streamer: type[HostStream] = field(default=HostStream, repr=False)
    buffer: StaticKVBuffer = field(init=False, repr=False)
    rotary: Rotaries = field(init=False, repr=False)  # one Rotary, or one per layer
    _shapes: dict[tuple[int, ...], _Shape] = field(default_factory=dict, init=False, repr=False)
    _cur: list[int] = field(default_factory=list, init=False, repr=False)
    _pool: Any = field(default=None, init=False, repr=False)
    # prefix + chunks of the last load, in buffer order (strong refs: identity stays unique)
    _resident: list[Any] = field(default_factory=list, init=False, repr=False)
    _partial: frozenset[int] = field(default=frozenset(), init=False, repr=False)  # local layers left out
    _last: _Shape | None = field(default=None, init=False, repr=False)
    _host: HostStream = field(init=False, repr=False)
    _gated: bool = field(default=False, init=False, repr=False)  # the next prefill waits per layer
    _taps: dict[int, Any] = field(default_factory=dict, init=False, repr=False)  # QueryTap per bucket

    def __post_init__(self) -> None:
        from ragcompress.models.rope import Rotary

        if self.step is None:
            self.step = default_step(self.model)
        elif self.step.model is not self.model:
            raise ValueError("step was built for another model than FastGenerator.model")
        step = self.step
        arch = step.arch
        # chunks are re-rotated layer by layer with each layer's table where they differ
        tables = tuple(Rotary.of(spec) for spec in arch.rope)
        self.rotary = tables[0] if len(set(tables)) == 1 else tables
        param = next(self.model.parameters())
        self.buffer = self._new_buffer(step, param)
        if self.attention is None:
            # flash has no soft-capping of attention logits
            self.attention = ReferenceCascade() if arch.attn_softcap else default_attention(param)
        self.graphs = self.graphs and param.device.type == "cuda"
        self._host = self.streamer(self.buffer, self.stream_group)

    def _new_buffer(self, step: DecoderStep, param: torch.Tensor) -> StaticKVBuffer:
        """The request's buffer: a context of ``capacity`` slots + the question regions."""
        return StaticKVBuffer(
            layers=step.num_layers,
            kv_heads=step.kv_heads,
            head_dim=step.head_dim,
            capacity=self.capacity,
            region=self.max_question + self.max_new_tokens,
            max_batch=self.max_batch,
            dtype=param.dtype,
            device=param.device,
            positions=step.arch.local_window is not None,  # local layers mask by slot position
            local=LocalLayers.of(step.arch),
        )

    @property
    def last_logits(self) -> torch.Tensor | None:
        """fp32 logits (B, vocab) of the last prefill or decode step (overwritten by the next
        step of the same shape: clone to keep)."""
        return None if self._last is None else self._last.logits

    @property
    def device(self) -> torch.device:
        return self.buffer.ctx_keys.device

    @property
    def _step(self) -> DecoderStep:
        assert self.step is not None  # set by __post_init__
        return self.step

    # -- context ---------------------------------------------------------------------------
    def load(self, prefix: BufferChunk, chunks: Sequence[BufferChunk | KVChunk]) -> int:
        """Write prefix + chunks (in this order) into the buffer; returns the next position.

        On CUDA all dense chunks take one launch and all quantized chunks one more
        (:func:`~ragcompress.kv.fast.write.write_batch`), stored
        :class:`~ragcompress.kv.chunk.KVChunk` layers included. Host-resident chunks
        (:class:`~ragcompress.kv.fast.host.HostChunk`, or stored chunks on the CPU while the
        buffer is on CUDA) are planned here and written during the next :meth:`prefill`, layer
        range by layer range under its compute (:mod:`~ragcompress.kv.fast.stream`).
        """
        return self.load_reusing(prefix, chunks, reuse=False)

    def load_reusing(
        self, prefix: BufferChunk, chunks: Sequence[BufferChunk | KVChunk], reuse: bool = True
    ) -> int:
        """:meth:`load`, skipping the leading chunks that the previous load already wrote.

        The same chunk objects, in the same order from the prefix on, land at the same slots
        and positions, so their bytes in the buffer are already right: only the rest is
        written. Chunks are treated as immutable (packed once when they enter the GPU tier);
        the buffer's context must only be written through :meth:`load` / this method.
        """
        items = [prefix, *chunks]
        same = 0
        # a streamed load that no prefill flushed never reached the buffer: nothing is resident
        dropped = self._host.discard()
        for old, new in zip(self._resident if reuse and not dropped else [], items, strict=False):
            if old is not new:
                break
            same += 1
        if same == len(items) == len(self._resident) and not self._gated:
            # the previous request's context again: slots, positions, the local layers it left
            # out and the device's context length are all as that load set them; writing
            # nothing is ~0.3 ms of host work before the step saved (64 chunks, H200 host)
            return self.buffer.next_position
        self._resident = []  # a failed write leaves nothing known-resident
        nxt, self._gated, self._partial = stream_batch(
            self.buffer, prefix, chunks, self.rotary, self._host, same, self._partial
        )
        self._resident = items
        return nxt

    def load_context(
        self,
        layers: Sequence[tuple[torch.Tensor, torch.Tensor]],
        position: int,
        positions: torch.Tensor | None = None,
    ) -> int:
        """Write a context assembled elsewhere as is (per layer keys/values (kv_heads, n,
        head_dim), keys already at their positions): how assembly modes other than ``concat``
        reach the buffer (APE's shared positions, blend's repaired tokens). Returns ``position``,
        where the question starts. ``positions`` (n,) int64: each slot's logical position
        (``Context.positions``), required for a family with local sliding-window layers."""
        n = int(layers[0][0].shape[1])
        if self.buffer.positions and (positions is None or tuple(positions.shape) != (n,)):
            raise ValueError(
                f"load_context: {self._step.arch.family} has local sliding-window layers; pass "
                f"positions, the ({n},) logical position of each slot (Context.positions)"
            )
        self._resident = []  # nothing here is a chunk a later load can reuse
        self._host.discard()
        self._gated = False
        return write_context(self.buffer, layers, position, positions)

    def context_views(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The loaded context as views of the buffer (:meth:`StaticKVBuffer.context_layers`), for a
        partial forward that repairs it in place (``blend``): host chunks are written first, and
        no later load reuses this one's chunks. None with local sliding-window layers (their
        buffer layers leave chunks out of the window)."""
        if self.buffer.positions:
            return None
        self._written()
        self._resident = []
        return self.buffer.context_layers()

    def recompute(self, slots: Any, chosen: torch.Tensor) -> bool:
        """``blend``'s partial forward of context slots ``chosen`` on this engine's step, in its
        buffer (:func:`~ragcompress.kv.fast.repair.repair_in_buffer`); False where it cannot."""
        from ragcompress.kv.fast.repair import repair_in_buffer

        return repair_in_buffer(self, slots, chosen)

    def _written(self) -> None:
        """Write the host chunks still planned or streaming now, for a reader that does not wait
        for them layer by layer (a view of the buffer, the probe's step)."""
        self._host.flush(join=True)
        self._gated = False

    # -- steps -----------------------------------------------------------------------------
    def bucket(self, n: int) -> int:
        """The padded length a question of ``n`` tokens runs at (one graph per bucket)."""
        if n > self.max_question:
            raise BufferOverflowError(
                f"question of {n} tokens is longer than max_question={self.max_question}"
            )
        fits = [b for b in self.buckets if n <= b <= self.max_question]
        return min(fits) if fits else self.max_question

    def prefill(self, questions: Sequence[Sequence[int]]) -> torch.Tensor:
        """Prefill B questions against the loaded context; returns their first tokens (B,)
        on the device (no host sync)."""
        return self._prefill(questions)

    def probe(self, question: Sequence[int], voters: int | None = None) -> torch.Tensor:
        """(ctx_len,) fp32: ``blend_question``'s ranking of the loaded context by the question's
        last ``voters`` tokens (:meth:`~ragcompress.kv.fast.probe.QueryTap.scores`), from one
        prefill of ``question`` in its own graph. Writes question region 0, as a prefill does."""
        from ragcompress.kv.fast.probe import QueryTap

        t = self.bucket(len(question))
        if t not in self._taps:
            assert self.attention is not None  # set by __post_init__
            self._taps[t] = QueryTap.over(self.attention, self.buffer, t, self._step.heads)
        self._written()  # the tap's step never waits for streamed chunks
        self._prefill([question], self._taps[t])
        return self._taps[t].scores(len(question), voters)  # type: ignore[no-any-return]

    def _prefill(
        self, questions: Sequence[Sequence[int]], probe: CascadeAttention | None = None
    ) -> torch.Tensor:
        lens = [len(q) for q in questions]
        if not questions or min(lens) == 0:
            raise ValueError("need at least one question, each with at least one token")
        t = self.bucket(max(lens))
        b = len(questions)
        self.buffer.check_question(max(lens), 0, b)
        gated = self._gated
        if gated and (not self._host.overlaps or (b, t, 1) not in self._shapes):
            self._host.flush()  # a capture, or a step that cannot wait, needs the context written
        args = prefill_args(questions, t, self.buffer, self._starts())  # before a capture
        shape = self._shape(b, t, gated, probe)
        shape.put(args)
        self._replay(shape)
        if gated:  # the host queues the copies while the step, queued first, computes
            self._host.flush()
            self._gated = False
        self._cur = lens
        self._last = shape
        assert shape.tokens is not None
        return shape.tokens

    def decode_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed each question its last token (B,); returns the next tokens (B,)."""
        b = len(self._cur)
        if any(c + 1 > self.buffer.region for c in self._cur):
            raise BufferOverflowError(
                f"generation ran past the question region of {self.buffer.region} slots"
            )
        host = decode_args(self._cur, self.buffer, self._starts())  # before a capture
        shape = self._shape(b, 1)
        shape.put(host, b)
        shape.args[:b].copy_(tokens.reshape(-1))
        self._replay(shape)
        self._cur = [c + 1 for c in self._cur]
        self._last = shape
        assert shape.tokens is not None
        return shape.tokens

    def steps(
        self,
        questions: Sequence[Sequence[int]],
        limit: int,
        choose: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Iterator[list[int]]:
        """Each question's token at each of up to ``limit`` steps (host lists of B ints): the
        step's argmax, or ``choose(logits (B, vocab) fp32) -> (B,)`` run outside the graph (a
        sampler). Lazy: a decode step runs only when the next list is asked for."""
        if limit <= 0:
            return
        tok = self.prefill(questions)
        for i in range(limit):
            if choose is not None:
                assert self._last is not None and self._last.logits is not None
                tok = choose(self._last.logits)
            yield tok.tolist()
            if i < limit - 1:
                tok = self.decode_step(tok).clone()

    def generate(
        self,
        questions: Sequence[Sequence[int]],
        max_new_tokens: int | None = None,
        stop_ids: set[int] | frozenset[int] = frozenset(),
    ) -> list[list[int]]:
        """Greedy tokens for each question (stop tokens end a question and are not returned)."""
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if limit > self.max_new_tokens:
            raise BufferOverflowError(f"max_new_tokens={limit} exceeds the buffer's {self.max_new_tokens}")
        out: list[list[int]] = [[] for _ in questions]
        done = [False] * len(questions)
        for host in self.steps(questions, limit):
            for j, t in enumerate(host):
                if not done[j]:
                    if t in stop_ids:
                        done[j] = True
                    else:
                        out[j].append(int(t))
            if all(done):
                break
        return out

    # -- graphs ----------------------------------------------------------------------------
    def warmup(self, batches: Sequence[int] = (1,), qlens: Sequence[int] = (32,)) -> None:
        """Capture (or build) the step shapes ahead of the first request."""
        for b in batches:
            for t in qlens:
                self._shape(b, self.bucket(t))
            self._shape(b, 1)

    def _shape(self, b: int, t: int, gated: bool = False, probe: CascadeAttention | None = None) -> _Shape:
        """The (batch, qlen) step, built (and captured) on first use. ``gated``: it waits, per
        layer range, for host chunks streamed while it runs; ``probe``: :meth:`probe`'s."""

        key = (b, t, 1) if gated else (b, t, 2) if probe is not None else (b, t)
        hit = self._shapes.get(key)
        if hit is not None:
            return hit
        gate = GatedAttention(self.attention, self._host) if gated else probe  # type: ignore[arg-type]
        return self._new_shape(key, b, t, gate)

    def _new_shape(self, key: tuple[int, ...], b: int, t: int, attention: CascadeAttention | None) -> _Shape:
        """Build (and capture) the ``b`` x ``t`` step under ``key`` (``attention`` None: the engine's)."""
        if b > self.max_batch:
            raise BufferOverflowError(f"{b} questions in one batch; the buffer holds {self.max_batch}")
        shape = new_shape(b, t, self.buffer, self.capacity, self._step.heads, self._step.kv_heads, attention)
        if self.graphs:
            self._pool = capture(shape, self._forward, self.buffer, self._pool)
        self._shapes[key] = shape
        return shape

    def _forward(self, shape: _Shape) -> None:
        import torch

        b, t = shape.batch, shape.qlen
        n = b * t
        a = shape.args
        with torch.inference_mode():
            shape.pull()
            shape.meta.q_used.copy_(a[3 * n : 3 * n + b * t : t])
            shape.meta.refresh()
            logits = self._step(
                a[:n].view(b, t),
                a[n : 2 * n].view(b, t),
                a[2 * n : 3 * n],
                a[4 * n :],
                self.buffer,
                shape.meta,
                shape.attention or self.attention,  # type: ignore[arg-type]
            )
            shape.logits = logits
            shape.tokens = greedy(logits)

    def _starts(self) -> list[int] | None:
        """Each question's first position in a ragged batch; None: the buffer's next position."""
        return None

    def _replay(self, shape: _Shape) -> None:
        if shape.graph is not None:
            shape.graph.replay()
        else:
            self._forward(shape)
        shape.ran()
