"""The fast engine's step arguments (``kv/fast/shapes.py``): the layout ``FastGenerator._forward``
reads, built from a cached per-shape template that no call may change."""

from __future__ import annotations

import types

import numpy as np
import pytest

from ragcompress.kv.fast.shapes import decode_args, prefill_args


def _reference(questions, t, region, starts):
    """The layout written out one value at a time."""
    b = len(questions)
    ids, pos, slots, used, last = [], [], [], [], []
    for i, q in enumerate(questions):
        ids += list(q) + [0] * (t - len(q))
        pos += [starts[i] + j for j in range(t)]
        slots += [i * region + j for j in range(t)]
        used += [t] * t
        last.append(i * t + len(q) - 1)
    assert len(last) == b
    return np.array(ids + pos + slots + used + last, dtype=np.int64)


@pytest.mark.parametrize("t", [1, 8])
def test_prefill_args_layout_and_template_left_untouched(t):
    buffer = types.SimpleNamespace(region=20, next_position=1000)
    one = [[7] * t]
    batch = [[5, 6][:t], [9] * t, [3]]
    for questions, starts in ((one, None), (batch, None), (batch, [10, 200, 3000])):
        want = _reference(questions, t, 20, starts or [1000] * len(questions))
        for _ in range(2):  # the same call again: nothing of the first stayed in the template
            got = prefill_args(questions, t, buffer, starts)
            assert got.flags.writeable and np.array_equal(got, want)
            got[:] = -1  # a caller writing into its copy changes no later call
    with pytest.raises(ValueError, match="contexts were placed"):
        prefill_args(batch, t, buffer, [1, 2])


def test_decode_args_layout():
    buffer = types.SimpleNamespace(region=20, next_position=1000)
    assert decode_args([4, 7], buffer).tolist() == [1004, 1007, 4, 27, 5, 8, 0, 1]
    assert decode_args([4, 7], buffer, [10, 50]).tolist() == [14, 57, 4, 27, 5, 8, 0, 1]
