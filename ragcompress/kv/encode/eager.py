"""An eager-attention view of a model, for the passes that need attention weights.

Attention weights exist only in transformers' eager attention, which a model selects through
its config (``config._attn_implementation``), shared by every thread that uses the model.
Switching it for the duration of a pass (what ``set_attn_implementation`` does) breaks every
other request running at that moment, and mutates a model the user handed us. Instead,
:func:`eager_view` builds once a second module tree over the *same* tensors: each module is
a shallow copy that shares its parameter and buffer dicts with the original (so in-place
updates, casts, device moves and replaced tensors are seen at once), with its own hook dicts
(hooks registered on the view do not fire on the model) and its own copy of the config, set
to eager. The model itself is never changed; concurrent requests pick per call which tree
runs. Passes that reduce the weights inside the forward (kvzip's reconstruction) use
:func:`tap_attention`: one hook per attention module, installed when the view is built,
calls the function the *calling thread* set, so requests sharing the view never see each
other's observers.
"""

from __future__ import annotations

import copy
import functools
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ragcompress.kv.fingerprint import submodules
from ragcompress.models.arch import arch_for

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["attention_view", "eager_view", "tap_attention"]

# model -> attention implementation -> (module structure when built, view)
_VIEWS: weakref.WeakKeyDictionary[Any, dict[str, tuple[tuple[int, ...], Any]]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
# The calling thread's attention tap (see tap_attention): hooks are installed once, when a view
# is built, and never added or removed afterwards, since torch iterates a module's hook dicts
# unlocked and another thread may be inside that module's forward at any moment.
_TAP = threading.local()
_TAPPED = "_ragcompress_tapped"  # attribute set on views whose attention modules carry a tap


def eager_view(model: PreTrainedModel) -> PreTrainedModel:
    """The eager view of ``model`` (kept per model; rebuilt when modules are added, removed or
    replaced, e.g. by adapter injection). Thread-safe."""
    return attention_view(model, "eager")


def attention_view(model: PreTrainedModel, implementation: str) -> PreTrainedModel:
    """A view of ``model`` over the same tensors whose own config selects the attention function
    ``implementation`` (``"eager"``: with the per-thread taps of :func:`tap_attention`; any other
    name registered with transformers' ``AttentionInterface``). Kept per model and name, rebuilt
    when modules are added, removed or replaced. Thread-safe; the model is never changed."""
    structure = (id(model), *map(id, submodules(model)))
    kept = _VIEWS.get(model, {}).get(implementation)
    if kept is not None and kept[0] == structure:
        return kept[1]  # type: ignore[no-any-return]
    with _LOCK:
        views = _VIEWS.setdefault(model, {})
        kept = views.get(implementation)
        if kept is None or kept[0] != structure:
            kept = views[implementation] = (structure, _build(model, implementation))
        return kept[1]  # type: ignore[no-any-return]


@contextmanager
def tap_attention(view: PreTrainedModel, fn: Callable[[int, Any], Any]) -> Iterator[None]:
    """Inside the block, ``fn(layer_idx, output)`` receives the output (attention output,
    weights (batch, heads, queries, keys), ...) of every decoder layer's attention module (as the
    family adapter names it) of ``view`` in the forwards *this thread* runs, and returns what the
    layer passes on."""
    if not getattr(view, _TAPPED, False):
        raise ValueError(f"{type(view).__name__} is not an eager view: its attention modules carry no tap")
    if getattr(_TAP, "fn", None) is not None:
        raise RuntimeError("tap_attention blocks do not nest")
    _TAP.fn = fn
    try:
        yield
    finally:
        _TAP.fn = None


def _tap(idx: int) -> Callable[[Any, Any, Any], Any]:
    def hook(module: Any, args: Any, output: Any) -> Any:
        fn = getattr(_TAP, "fn", None)
        return None if fn is None else fn(idx, output)

    return hook


def _build(model: PreTrainedModel, implementation: str) -> PreTrainedModel:
    import torch

    configs = _config_copies(model.config)
    twins: dict[int, Any] = {}
    for module in model.modules():
        twins[id(module)] = copy.copy(module)  # shallow: shares _parameters and _buffers dicts
    for module in model.modules():
        twin = twins[id(module)]
        for name, value in vars(module).items():
            if name in ("_parameters", "_buffers"):
                continue
            if name == "_modules":
                twin.__dict__[name] = {k: None if m is None else twins[id(m)] for k, m in value.items()}
            elif "_hooks" in name and isinstance(value, dict):
                twin.__dict__[name] = type(value)(value)  # hooks added to the view stay on the view
            else:
                twin.__dict__[name] = _rebind(value, twins, configs)
    view = twins[id(model)]
    if implementation != "eager":  # a registered function: transformers' setter validates names
        view.config._attn_implementation = implementation  # the view's own config copy only
        return view  # type: ignore[no-any-return]
    view.set_attn_implementation("eager")  # on the view's own config copies only
    arch = arch_for(model)  # the family adapter names the attention modules to tap
    for i, layer in enumerate(arch.layers(view)):
        arch.attention(layer).register_forward_hook(_tap(i))
    setattr(view, _TAPPED, True)
    # One token with output_attentions before the view is shared: transformers installs its
    # output-capturing hooks lazily on the first such call, which must not race with forwards.
    with torch.inference_mode():
        view(input_ids=torch.zeros((1, 1), dtype=torch.long, device=model.device), output_attentions=True)
    return view  # type: ignore[no-any-return]


def _config_copies(config: Any) -> dict[int, Any]:
    """id(config or nested sub-config) → its counterpart in one deep copy of ``config``."""
    twin = copy.deepcopy(config)
    out: dict[int, Any] = {}
    todo = [(config, twin)]
    while todo:
        a, b = todo.pop()
        out[id(a)] = b
        for key in getattr(a, "sub_configs", {}) or {}:
            sub = getattr(a, key, None)
            if sub is not None:
                todo.append((sub, getattr(b, key)))
    return out


def _rebind(value: Any, twins: dict[int, Any], configs: dict[int, Any]) -> Any:
    """``value`` with references to the original modules and configs replaced by the view's.

    Besides plain references, covers forwards that hook libraries (accelerate) install as
    instance attributes: bound methods and ``partial(fn, module, ...)`` of an original module.
    """
    if id(value) in configs:
        return configs[id(value)]
    if id(value) in twins:
        return twins[id(value)]
    if isinstance(value, types.MethodType) and id(value.__self__) in twins:
        return types.MethodType(value.__func__, twins[id(value.__self__)])
    if isinstance(value, functools.partial) and value.args and id(value.args[0]) in twins:
        return functools.partial(value.func, twins[id(value.args[0])], *value.args[1:], **value.keywords)
    return value
