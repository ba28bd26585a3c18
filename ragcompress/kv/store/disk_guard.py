"""Filesystem checks for the disk chunk store: a private cache directory, paths that stay
inside it, and chunk files opened without following links, blocking or reading them whole.

A chunk cache directory that another user can write is a way to plant chunks (without a
signing key they are trusted) or to fill the disk; it is refused unless the caller says the
directory is shared on purpose (``allow_shared_dir=True``). We create directories 0o700, so
``/tmp/chunks`` under the sticky ``/tmp`` is private to its creator.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["UnusableFile", "check_private", "ensure_private_dir", "inside", "open_regular"]

log = logging.getLogger(__name__)

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFLNK: "a symlink",
}


class UnusableFile(OSError):
    """Something at a chunk path that is not a chunk file; ``reason`` goes into miss statistics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_private(directory: Path, allow_shared: bool) -> None:
    """Refuse (PermissionError) a directory that is world-writable or owned by another user."""
    st = directory.stat()
    problems = []
    if st.st_mode & stat.S_IWOTH:
        problems.append(f"is world-writable (mode {stat.S_IMODE(st.st_mode):#o})")
    if st.st_uid != os.geteuid():
        problems.append(f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})")
    if not problems:
        return
    why = " and ".join(problems)
    if allow_shared:
        log.warning("chunk cache directory %s %s; used anyway (allow_shared_dir=True)", directory, why)
        return
    raise PermissionError(
        f"chunk cache directory {directory} {why}: another user could plant or delete chunks. "
        "Use a private directory (we create new ones with mode 0o700), or pass "
        "allow_shared_dir=True (with a signing secret) if sharing it is intended"
    )


def ensure_private_dir(directory: Path, allow_shared: bool) -> None:
    """Create ``directory`` (and parents) when missing, mode 0o700; check it is private."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"chunk cache directory {directory} cannot be created: {err}") from err
    if not directory.is_dir():
        raise NotADirectoryError(f"chunk cache path {directory} is not a directory")
    check_private(directory, allow_shared)


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symlink resolved, is ``root`` or below it (``root`` resolved)."""
    try:
        path.resolve().relative_to(root)
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False
    return True


def open_regular(path: Path) -> tuple[int, int]:
    """``(fd, size)`` of the regular file at ``path``; :class:`UnusableFile` for anything else.

    ``O_NOFOLLOW``: a symlink at a chunk path is refused, not followed. ``O_NONBLOCK``: opening
    a FIFO returns at once instead of waiting for a writer (it is then refused by ``fstat``).
    FileNotFoundError passes through (a plain miss).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as err:
        try:
            kind = _KINDS.get(stat.S_IFMT(os.lstat(path).st_mode))
        except OSError:
            kind = None
        why = f"not a regular file: {kind}" if kind else f"unreadable file: {err.strerror}"
        raise UnusableFile(why) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnusableFile(f"not a regular file: {_KINDS.get(stat.S_IFMT(st.st_mode), 'unknown type')}")
        return fd, st.st_size
    except BaseException:
        os.close(fd)
        raise
