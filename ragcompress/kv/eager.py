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
runs.
"""

from __future__ import annotations

import copy
import functools
import threading
import types
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["eager_view"]

_VIEWS: weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], Any]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def eager_view(model: PreTrainedModel) -> PreTrainedModel:
    """``model`` itself when it already runs eager attention, else its eager view (kept per
    model; rebuilt when modules are added, removed or replaced, e.g. by adapter injection)."""
    if model.config._attn_implementation == "eager":
        return model
    structure = tuple(map(id, model.modules()))
    kept = _VIEWS.get(model)
    if kept is not None and kept[0] == structure:
        return kept[1]  # type: ignore[no-any-return]
    with _LOCK:
        kept = _VIEWS.get(model)
        if kept is None or kept[0] != structure:
            kept = _VIEWS[model] = (structure, _build(model))
        return kept[1]  # type: ignore[no-any-return]


def _build(model: PreTrainedModel) -> PreTrainedModel:
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
    view.set_attn_implementation("eager")  # on the view's own config copies only
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
