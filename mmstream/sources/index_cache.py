"""The record index on disk: built by one process per node, memory-mapped by all the others.

    arrays, meta, status = load_or_build(path, key, build)   # status: "loaded" | "built"

``path`` is ``<cache root>/index/<hash of what names the index>.idx`` (:func:`index_file`);
the cache root is ``sampling.storage.cache_dir``, else ``$XDG_CACHE_HOME/mmstream``, else
``~/.cache/mmstream`` (where remote annotation files are copied too). ``key`` says what the
index was built from (each annotation file's size and modification time, a URL's ETag, the
config fields that decide records and groups); ``build()`` returns the arrays and a JSON-able
``meta`` when the file is missing, stale or damaged.

File layout: ``MAGIC``, the format version and the header's length (little-endian
uint32s), the header (JSON: key, meta, each array's dtype, shape and offset, the data's
length and sha256), then the arrays, each 64-byte aligned. Opening checks all of it, the
sha256 included, and uses nothing that fails a check: the file is rebuilt (with a warning
naming why). The arrays come back as read-only views of one shared mapping: every rank and
DataLoader worker on the node reads the same page-cache pages (one copy in RAM).

Building takes an exclusive ``lockf`` lock on the file's lock (``.mmstream/<name>.lock``):
processes that start together wait for the first one's build instead of each doing it; a
rebuild writes a new file and renames it over the old one (a process still mapping the old
one keeps reading it unchanged). Building deletes the folder's indexes not used for
``KEEP_DAYS`` days.
"""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import socket
import struct
import time
from typing import Any, Callable, Optional

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"MMSINDEX"
#: Bump when the file layout or what the arrays mean changes: older files are rebuilt.
FORMAT_VERSION = 1
ALIGN = 64
#: Indexes not used for this many days are deleted when another one is built.
KEEP_DAYS = 30
_PREFIX = struct.Struct("<8sII")  # magic, format version, header length

Arrays = dict[str, np.ndarray]


def cache_root(cache_dir: Optional[str] = None) -> str:
    """``cache_dir``, else ``$XDG_CACHE_HOME/mmstream``, else ``~/.cache/mmstream``."""
    if cache_dir:
        return os.path.abspath(os.path.expanduser(cache_dir))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mmstream")


def index_file(root: str, identity: Any) -> str:
    """Where the index named by ``identity`` (JSON-able: what it is an index *of*) lives."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return os.path.join(root, "index", f"{digest}.idx")


def load_or_build(path: str, key: dict, build: Callable[[], tuple[Arrays, dict]]) -> tuple[Arrays, dict, str]:
    """The arrays and meta of the index at ``path`` built from ``key``: loaded when the
    file is there and sound, else built (once: concurrent callers wait for the lock) and
    saved. Returns ``(arrays, meta, "loaded" | "built")``."""
    got, why = load(path, key)
    if got is not None:
        _touch(path)
        return got[0], got[1], "loaded"
    from ..errors import MmstreamError
    from ..sinks.manifest import file_lock  # the project's lockf lock (released even on kill -9)

    folder = os.path.dirname(path)
    t0 = time.monotonic()
    try:
        os.makedirs(folder, exist_ok=True)
        lock = file_lock(folder, os.path.basename(path) + ".lock", what="building the record index", blocking=True)
        lock.__enter__()
    except (OSError, MmstreamError) as exc:  # no cache folder to be had: this process builds its own
        log.warning("cannot use the record index cache in %s (%s): building the index here", folder, exc)
        arrays, meta = build()
        return arrays, meta, "built"
    try:
        got, why = load(path, key)  # built meanwhile by the process we waited for?
        if got is not None:
            log.info("record index %s: built by another process (waited %.1f s)", path, time.monotonic() - t0)
            return got[0], got[1], "loaded"
        if why != "missing":
            log.warning("record index cache %s is %s: rebuilding it", path, why)
        t1 = time.monotonic()
        arrays, meta = build()
        meta = dict(meta, built={"host": socket.gethostname(), "pid": os.getpid(), "at": time.time(),
                                 "seconds": round(time.monotonic() - t1, 3)})
        try:
            save(path, key, arrays, meta)
            prune(folder, keep=path)
        except OSError as exc:  # a read-only or full cache folder: this run goes on without it
            log.warning("cannot save the record index to %s: %s", path, exc)
            return arrays, meta, "built"
    finally:
        lock.__exit__(None, None, None)
    got, why = load(path, key)  # the mapped copy, so this process shares it too
    if got is None:
        log.warning("record index %s cannot be read back (%s); using the built copy", path, why)
        return arrays, meta, "built"
    return got[0], got[1], "built"


def save(path: str, key: dict, arrays: Arrays, meta: dict) -> None:
    """Write the index atomically (a temporary file, fsync, rename)."""
    layout, offset = {}, 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        arrays[name] = a
        layout[name] = {"descr": np.lib.format.dtype_to_descr(a.dtype), "shape": list(a.shape), "offset": offset}
        offset = _aligned(offset + a.nbytes)
    sha = hashlib.sha256()
    blobs = []
    at = 0
    for name, a in arrays.items():
        pad = layout[name]["offset"] - at
        blob = b"\0" * pad + a.tobytes()
        sha.update(blob)
        blobs.append(blob)
        at += len(blob)
    header = json.dumps({"key": key, "meta": meta, "arrays": layout, "data_bytes": at, "sha256": sha.hexdigest()},
                        sort_keys=True).encode()
    head = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header
    head += b"\0" * (_aligned(len(head)) - len(head))
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            for blob in blobs:
                f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path: str, key: Optional[dict], sha256: Optional[str] = None) -> tuple[Optional[tuple[Arrays, dict]], str]:
    """``((arrays, meta), "ok")``, or ``(None, why)`` for a file that is missing, stale or
    damaged. ``meta`` gains the data's ``sha256``. Given ``sha256`` instead of ``key`` (the
    file another process of the node checked fully), the data's recorded sha256 must be that
    one and is not computed again: what an unpickled index maps (:func:`remap`)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    try:
        size = os.fstat(fd).st_size
        if size < _PREFIX.size:
            return None, "truncated"
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        return None, f"unreadable ({exc})"
    finally:
        os.close(fd)
    magic, version, hlen = _PREFIX.unpack_from(mm, 0)
    if magic != MAGIC:
        return None, "not an mmstream index"
    if version != FORMAT_VERSION:
        return None, f"format version {version}, not {FORMAT_VERSION}"
    if _PREFIX.size + hlen > size:
        return None, "truncated"
    try:
        header = json.loads(mm[_PREFIX.size:_PREFIX.size + hlen])
        start = _aligned(_PREFIX.size + hlen)
        if key is not None and header["key"] != json.loads(json.dumps(key)):
            return None, "stale (the annotations or the config changed)"
        if sha256 is not None and header["sha256"] != sha256:
            return None, "another index (rebuilt since)"
        if size != start + int(header["data_bytes"]):
            return None, f"truncated or extended ({size} bytes, expected {start + int(header['data_bytes'])})"
        if sha256 is None and hashlib.sha256(memoryview(mm)[start:]).hexdigest() != header["sha256"]:
            return None, "damaged (sha256 differs)"
        arrays = {}
        for name, spec in header["arrays"].items():
            dtype = np.lib.format.descr_to_dtype(_tuples(spec["descr"]))
            shape = tuple(int(n) for n in spec["shape"])
            count = int(np.prod(shape)) if shape else 1
            at = start + int(spec["offset"])
            if at + count * dtype.itemsize > size:
                return None, f"array {name} runs past the end"
            arrays[name] = np.frombuffer(mm, dtype, count, at).reshape(shape)
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable header ({exc})"
    return (arrays, dict(header["meta"], sha256=header["sha256"])), "ok"


def remap(path: str, sha256: str) -> Optional[Arrays]:
    """The arrays of the index file at ``path`` if it is still the one whose data has
    ``sha256``, mapped again (a DataLoader worker started by spawn or forkserver, which got
    the index pickled); None when it is gone or was rebuilt since."""
    got, _ = load(path, None, sha256)
    return None if got is None else got[0]


def prune(folder: str, keep: str, days: float = KEEP_DAYS) -> None:
    """Delete the indexes of ``folder`` not used for ``days`` days (their empty lock files
    stay: one could be held right now)."""
    cutoff = time.time() - days * 86400
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.endswith(".idx") and path != keep:
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.remove(path)
            except OSError:
                pass


def _touch(path: str) -> None:
    """Mark an index used (its modification time), so that :func:`prune` keeps it."""
    try:
        if time.time() - os.stat(path).st_mtime > 3600:
            os.utime(path)
    except OSError:  # a read-only cache: nothing to mark
        pass


def _tuples(descr: Any) -> Any:
    """A structured dtype's descr as JSON gave it back (lists) in numpy's form (tuples)."""
    return [tuple(field) for field in descr] if isinstance(descr, list) else descr


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


__all__ = ["load_or_build", "load", "remap", "save", "index_file", "cache_root", "FORMAT_VERSION"]
