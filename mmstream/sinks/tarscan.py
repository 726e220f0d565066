"""The one place mmstream reads tar headers itself: a shard's members, checked before
any of their bytes are read.

webdataset's ``TarWriter`` writes the shards (:mod:`.shards`); wids and webdataset's
tar iterators read them (``training_adapters``). Before a reader trusts a shard,
``mmstream verify`` and the adapters walk its headers here::

    for m in scan_members("/data/cache/minicpmv-000000.tar", limit=entry["bytes"]):
        m.name, m.offset, m.size          # a regular file, inside the shard
    keys = shard_keys(path, limit=entry["bytes"])   # sample keys in order

A member is refused with :class:`UnsafeShard` (nothing is extracted, nothing is
written, no member's bytes are read) when it is anything but a regular file (a
symbolic or hard link, a character or block device, a FIFO, a folder, a sparse
file), when its name is absolute or climbs out (``/etc/x``, ``../x``, ``a/../../x``),
when it declares more bytes than the shard's manifest entry (``limit``) or the file
holds, or when a header block (a long name, a pax record) is larger than
:data:`MAX_HEADER_BYTES`. This module is the only one of ``mmstream`` that imports
``tarfile``.
"""
from __future__ import annotations

import io
import os
import posixpath
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional, Union

from ..errors import MmstreamError

#: The largest header read the scanner allows (a GNU long name or a pax record block):
#: a header claiming more is hostile (webdataset's names are short).
MAX_HEADER_BYTES = 1 << 20

_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_KINDS = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device",
          tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO", tarfile.DIRTYPE: "a folder",
          tarfile.GNUTYPE_SPARSE: "a sparse file"}


class UnsafeShard(MmstreamError):
    """A tar shard that a reader must not trust (a hostile or damaged member)."""

    def __init__(self, shard: str, reason: str, member: Optional[str] = None):
        self.shard = shard
        self.member = member
        self.reason = reason
        if member is None:
            super().__init__(f"{shard}: {reason}; refused")
        else:
            super().__init__(f"{shard}: member {member!r}: {reason}; refused (its bytes were not read)")


@dataclass(frozen=True)
class Member:
    """A regular file inside a shard: its bytes are ``shard[offset:offset + size]``."""

    name: str
    offset: int
    size: int


def name_problem(name: str) -> Optional[str]:
    """Why a member name is unsafe (absolute, climbs out, empty), or None."""
    if not name:
        return "an empty name"
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        return "an absolute name"
    if ".." in unified.split("/"):
        return "a name that climbs out of the shard (..)"
    return None


def member_problem(name: str, kind: bytes, end: int, limit: int, limit_what: str) -> Optional[str]:
    """Why a member is refused, or None: ``kind`` is its tar type flag, ``end`` the
    offset just past its declared bytes, ``limit`` the bytes the shard may hold."""
    if kind not in _REGULAR:
        return f"{_KINDS.get(kind, f'of tar type {kind!r}')}, not a regular file"
    bad = name_problem(name)
    if bad:
        return bad
    if end > limit:
        return f"declares bytes up to offset {end}, past the {limit} bytes {limit_what}"
    return None


class _BoundedReads(io.RawIOBase):
    """A read-only view of a file that refuses any single read over ``MAX_HEADER_BYTES``:
    tarfile reads only headers while scanning, so a larger read is a hostile header."""

    def __init__(self, f: BinaryIO, shard: str):
        super().__init__()
        self._f = f
        self.shard = shard
        self.name = shard

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > MAX_HEADER_BYTES:
            raise UnsafeShard(self.shard, f"a header block of {n} bytes (more than {MAX_HEADER_BYTES})")
        return self._f.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


def scan_members(source: Union[str, os.PathLike, BinaryIO], *, limit: Optional[int] = None,
                 name: Optional[str] = None) -> Iterator[Member]:
    """Every member of a tar shard, in order, each checked before it is yielded.

    ``source`` is a path or a seekable binary file; ``limit`` the shard's size in its
    manifest entry (the file's own size when None, and never more than it). Raises
    :class:`UnsafeShard` at the first refused member, or for a file that is not a
    readable tar; ``OSError`` when the file cannot be opened.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            yield from scan_members(f, limit=limit, name=name or os.fspath(source))
        return
    shard = name or str(getattr(source, "name", "<tar>"))
    size = source.seek(0, os.SEEK_END)
    source.seek(0)
    what = "the file holds"
    if limit is not None and limit < size:
        size, what = int(limit), "its manifest entry lists"
    try:
        tar = tarfile.open(fileobj=_BoundedReads(source, shard), mode="r:")
    except tarfile.TarError as exc:
        raise UnsafeShard(shard, f"not a readable tar ({exc})") from None
    with tar:
        while True:
            try:
                info = tar.next()
            except tarfile.TarError as exc:
                raise UnsafeShard(shard, f"not a readable tar ({exc})") from None
            if info is None:
                return
            problem = member_problem(info.name, info.type, info.offset_data + info.size, size, what)
            if problem:
                raise UnsafeShard(shard, problem, member=info.name)
            tar.members = []  # headers only: nothing accumulates over a large shard
            yield Member(info.name, info.offset_data, info.size)


def sample_key(member_name: str) -> tuple[str, str]:
    """``(key, extension)`` of a member as webdataset groups it: the key runs to the
    first dot of the file name (``a/b.00000.jpg`` -> ``("a/b", "00000.jpg")``)."""
    folder, base = posixpath.split(member_name)
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def shard_keys(source: Union[str, os.PathLike, BinaryIO], *, limit: Optional[int] = None,
               name: Optional[str] = None) -> list[str]:
    """The sample keys of a shard in order of first appearance (every member checked)."""
    keys: list[str] = []
    seen: set[str] = set()
    for m in scan_members(source, limit=limit, name=name):
        key, _ = sample_key(m.name)
        if key not in seen:
            seen.add(key)
            keys.append(key)
    return keys
