"""Durable, all-or-nothing file writes.

A file is written under a temporary name in the same folder, flushed to disk, then
renamed over the final name, and the folder entry is flushed too. A reader sees the
old file, the new file, or nothing; never half a file::

    atomic_write_json(os.path.join(out, "manifest.json"), manifest)

Every ``OSError`` becomes a :class:`WriteError` that names the path, so a full disk
or a read-only mount stops a run with a message the user can act on.
"""
from __future__ import annotations

import errno
import json
import os
from typing import Any, Callable, Optional

import numpy as np

from ..errors import MmstreamError

#: Temporary files are ``<final name>.tmp-<pid>``: never ``*.tar`` or ``*.json``, so no
#: reader (webdataset brace patterns, ``energon prepare``'s ``**/*.tar`` glob, a
#: ``json.load`` of the final name) can take one for a finished file.
TMP_MARK = ".tmp-"


class WriteError(MmstreamError):
    """Writing the output failed (disk full, permission denied, read-only mount...)."""

    def __init__(self, path: str, exc: OSError, hint: str = ""):
        self.path = path
        self.errno = exc.errno
        what = exc.strerror or str(exc)
        name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
        text = f"cannot write {path}: {what}" + (f" ({name})" if name else "")
        super().__init__(f"{text}. {hint}".strip() if hint else text)


def tmp_name(path: str) -> str:
    """The temporary name this process uses while ``path`` is being written."""
    return f"{path}{TMP_MARK}{os.getpid()}"


def is_tmp_name(name: str) -> bool:
    return TMP_MARK in os.path.basename(name)


def fsync_dir(path: str) -> None:
    """Flush a folder's entries (a rename is durable only after this)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # some filesystems (and Windows) cannot open folders; best effort
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def makedirs(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise WriteError(path, exc) from None


def commit(tmp: str, final: str) -> None:
    """Rename a fully written, fsynced temporary file to its final name."""
    try:
        os.replace(tmp, final)
    except OSError as exc:
        raise WriteError(final, exc) from None
    fsync_dir(os.path.dirname(os.path.abspath(final)))


def atomic_write(path: str, write: Callable[[Any], None], *, hint: str = "") -> None:
    """Write ``path`` atomically; ``write(f)`` fills the binary file object ``f``."""
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        remove_quietly(tmp)
        raise WriteError(path, exc, hint) from None
    except BaseException:
        remove_quietly(tmp)
        raise
    commit(tmp, path)


def atomic_write_bytes(path: str, data: bytes, *, hint: str = "") -> None:
    atomic_write(path, lambda f: f.write(data), hint=hint)


def atomic_write_json(path: str, obj: Any, *, indent: Optional[int] = 1, hint: str = "") -> None:
    atomic_write_bytes(path, dump_json(obj, indent=indent), hint=hint)


def dump_json(obj: Any, *, indent: Optional[int] = None) -> bytes:
    """UTF-8 JSON; numpy scalars and arrays become plain numbers and lists."""
    return json.dumps(obj, ensure_ascii=False, indent=indent, default=json_default).encode("utf-8")


def json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass
