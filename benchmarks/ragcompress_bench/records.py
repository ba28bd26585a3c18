"""For the diagnostic scripts under ``results/``: another record's script, or a module of the
tree before a change, loaded as a module of its own (an A/B beside the library's)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

__all__ = ["RESULTS", "record_module"]

#: benchmarks/results/, where each record's scripts live
RESULTS = Path(__file__).resolve().parents[1] / "results"


def record_module(name: str, path: Path, replace: tuple[str, str] | None = None) -> types.ModuleType:
    """``path`` executed as module ``name`` (registered in ``sys.modules``, so Triton finds its
    jit functions' source). ``replace``: ``(old, new)`` substituted in the source first (e.g. an
    import redirected to another "before" module)."""
    if replace is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod
    mod = types.ModuleType(name)
    mod.__file__ = str(path)
    sys.modules[name] = mod
    exec(compile(path.read_text().replace(*replace), str(path), "exec"), mod.__dict__)
    return mod
