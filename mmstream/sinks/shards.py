"""Rotating shard writers that never leave a file a reader could take for a shard.

A shard is written as ``<name>.tmp-<pid>`` by webdataset's own ``TarWriter`` (fixed
mtime, owner and mode: the same samples give the same bytes on every run), hashed
while it is written, fsynced, and renamed to its final name when it holds
``maxcount`` samples or when the writer is closed. Only then does
``on_commit(ShardInfo)`` run (the caller records it in the manifest)::

    with ShardWriter(out, lambda i: f"pretrain-{i:06d}.tar", maxcount=1000,
                     on_commit=manifest.add_shard) as writer:
        for sample in samples:
            writer.write(encode(sample))

Leaving the ``with`` block on an exception deletes the open temporary file; shards
committed before stay as they are. A failing write (disk full, permission denied,
read-only mount) raises :class:`~.atomic.WriteError` naming the path.

:class:`FilesWriter` is the same contract for the ``files`` layout: frames go to
``images/...`` as they come, and the "shard" that is committed atomically is a JSON
list of the records (``parts/<name>.json``).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Optional

from ..errors import MmstreamError
from .atomic import WriteError, atomic_write_bytes, commit, dump_json, fsync_dir, remove_quietly, tmp_name
from .formats import Encoded

if TYPE_CHECKING:
    import webdataset

#: mtime stored in every tar header: fixed, so the same samples give the same bytes
#: (and the same sha256) on every run.
TAR_MTIME = 0
#: Mode of every member (owner and group names are empty, ids 0).
TAR_MODE = 0o644
#: Longest member name: what fits a tar header's name field, the only name wids'
#: indexer reads (a longer or non-ASCII name would go to a pax record it skips).
MAX_MEMBER_NAME = 100
#: Folder (inside the output folder) of the ``files`` layout's per-shard JSON lists.
PARTS_DIR = "parts"

RESUME_HINT = "Shards completed so far are kept; rerun the same command to continue from them."

_NAME_RE = re.compile(r"^(?P<prefix>[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)*?)-(?:r(?P<rank>\d+)-)?(?:w(?P<writer>\d+)-)?"
                      r"(?P<index>\d+)\.(?P<ext>tar|json)$")


def shard_name(prefix: str, index: int, *, rank: int = 0, world_size: int = 1, ext: str = "tar",
               writer: Optional[int] = None) -> str:
    """``pretrain-000007.tar``; with several ranks ``pretrain-r1-000007.tar``; written by
    writer 3 of a rank's Ray workers ``pretrain-w3-000007.tar`` (``pretrain-r1-w3-...``)."""
    w = f"w{writer}-" if writer is not None else ""
    if world_size > 1:
        return f"{prefix}-r{rank}-{w}{index:06d}.{ext}"
    return f"{prefix}-{w}{index:06d}.{ext}"


def parse_shard_name(name: str) -> Optional[dict[str, Any]]:
    """Inverse of :func:`shard_name` (``None`` for other names); ``rank`` is None
    for single-rank names, ``writer`` None for shards a rank wrote itself."""
    m = _NAME_RE.match(os.path.basename(name))
    if not m:
        return None
    return {"prefix": m["prefix"], "rank": int(m["rank"]) if m["rank"] is not None else None,
            "writer": int(m["writer"]) if m["writer"] is not None else None,
            "index": int(m["index"]), "ext": m["ext"]}


@dataclass
class ShardInfo:
    """A committed shard: ``name`` is relative to the output folder."""

    name: str
    index: int
    count: int
    sha256: str
    bytes: int
    keys: list[str] = field(default_factory=list)
    content_sha256: Optional[str] = None  # files layout: hash over its frame files


class _HashingFile:
    """Write-through file wrapper that hashes and counts what passes through."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.f.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def check_member_name(name: str) -> str:
    """A member name every webdataset reader sees whole (ASCII, at most 100 bytes)."""
    if not name.isascii() or len(name) > MAX_MEMBER_NAME:
        raise MmstreamError(f"tar member name {name!r} must be ASCII and at most {MAX_MEMBER_NAME} characters "
                            f"(wids reads only the tar header's name field); use a shorter source name")
    return name


class _RotatingWriter:
    """What both writers share: counting, rotation, commit callback, abort."""

    def __init__(self, directory: str, name_for: Callable[[int], str], *, maxcount: int,
                 start_index: int = 0, on_commit: Optional[Callable[[ShardInfo], None]] = None):
        if maxcount < 1:
            raise ValueError("maxcount must be >= 1")
        self.directory = directory
        self.name_for = name_for
        self.maxcount = maxcount
        self.index = start_index
        self.on_commit = on_commit
        self.committed: list[ShardInfo] = []
        self._keys: list[str] = []

    # subclasses: _open(), _add(enc), _finish() -> ShardInfo, _discard()
    @property
    def is_open(self) -> bool:
        raise NotImplementedError

    def write(self, enc: Encoded) -> None:
        if not self.is_open:
            self._open()
        self._add(enc)
        self._keys.append(enc.key)
        if len(self._keys) >= self.maxcount:
            self.flush()

    def flush(self) -> Optional[ShardInfo]:
        """Commit the open shard now (if it holds any sample)."""
        if not self.is_open:
            return None
        if not self._keys:
            self._discard()
            return None
        info = self._finish()
        self._keys = []
        self.index += 1
        self.committed.append(info)
        if self.on_commit is not None:
            self.on_commit(info)
        return info

    def close(self) -> Optional[ShardInfo]:
        return self.flush()

    def abort(self) -> None:
        """Drop the open shard (its temporary file is deleted)."""
        if self.is_open:
            self._discard()
        self._keys = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


class ShardWriter(_RotatingWriter):
    """Tar shards written by ``webdataset.TarWriter``: each :class:`Encoded` becomes
    members ``KEY.<ext>``, in the encoder's order."""

    def __init__(self, directory: str, name_for: Callable[[int], str], *, maxcount: int,
                 start_index: int = 0, on_commit: Optional[Callable[[ShardInfo], None]] = None):
        super().__init__(directory, name_for, maxcount=maxcount, start_index=start_index, on_commit=on_commit)
        self._file: Optional[BinaryIO] = None
        self._hashing: Optional[_HashingFile] = None
        self._tar: Optional["webdataset.TarWriter"] = None
        self._tmp = ""
        self._final = ""

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def _open(self) -> None:
        import webdataset  # here: it imports torch, and `import mmstream.sinks` stays light

        self._final = os.path.join(self.directory, self.name_for(self.index))
        self._tmp = tmp_name(self._final)
        try:
            self._file = open(self._tmp, "wb")
        except OSError as exc:
            raise WriteError(self._tmp, exc, RESUME_HINT) from None
        self._hashing = _HashingFile(self._file)
        self._tar = webdataset.TarWriter(self._hashing, user="", group="", mode=TAR_MODE, mtime=TAR_MTIME,
                                         encoder=False)

    def _add(self, enc: Encoded) -> None:
        assert self._tar is not None
        for ext, _ in enc.members:
            check_member_name(f"{enc.key}.{ext}")
        try:
            for ext, data in enc.members:  # one member a call: TarWriter sorts a sample's members
                self._tar.write({"__key__": enc.key, ext: data})
        except OSError as exc:
            self._discard()
            raise WriteError(self._tmp, exc, RESUME_HINT) from None

    def _finish(self) -> ShardInfo:
        assert self._tar is not None and self._file is not None and self._hashing is not None
        try:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            self._discard()
            raise WriteError(self._tmp, exc, RESUME_HINT) from None
        info = ShardInfo(name=os.path.relpath(self._final, self.directory), index=self.index,
                         count=len(self._keys), sha256=self._hashing.sha.hexdigest(),
                         bytes=self._hashing.size, keys=list(self._keys))
        tmp = self._tmp
        self._file = self._tar = self._hashing = None
        try:
            commit(tmp, self._final)
        except WriteError:
            remove_quietly(tmp)
            raise
        return info

    def _discard(self) -> None:
        for closer in (self._tar, self._file):
            try:
                if closer is not None:
                    closer.close()
            except (OSError, ValueError):
                pass
        self._file = self._tar = self._hashing = None
        remove_quietly(self._tmp)


class FilesWriter(_RotatingWriter):
    """The ``files`` layout: frames written as files, records committed per part.

    ``name_for(i)`` names the part (``parts/minicpmv-000000.json``). The part is a JSON
    list of the records (paths relative to the output folder). Frame files are written
    under a temporary name and renamed, so a frame that a committed part names is never
    seen half-written, even when a resumed run writes it again. Several records may
    name the same frames (a decode group). ``content_sha256`` of a part digests each
    frame file its records name, in order (:func:`update_content_hash`).
    """

    #: Frame digests kept in memory (the frames of the last few groups); others are read back.
    DIGESTS_KEPT = 4096

    def __init__(self, directory: str, name_for: Callable[[int], str], *, maxcount: int,
                 start_index: int = 0, on_commit: Optional[Callable[[ShardInfo], None]] = None):
        super().__init__(directory, name_for, maxcount=maxcount, start_index=start_index, on_commit=on_commit)
        self._records: Optional[list[dict[str, Any]]] = None
        self._content = hashlib.sha256()
        self._made_dirs: set[str] = set()
        self._digests: dict[str, tuple[int, str]] = {}  # rel path -> (size, sha256) of frames written

    @property
    def is_open(self) -> bool:
        return self._records is not None

    def _open(self) -> None:
        self._records = []
        self._content = hashlib.sha256()

    def store_files(self, enc: Encoded) -> None:
        """Write the frame files ``enc`` carries (atomically each)."""
        for rel, data in enc.files:
            path = os.path.join(self.directory, rel)
            parent = os.path.dirname(path)
            try:
                if parent not in self._made_dirs:
                    os.makedirs(parent, exist_ok=True)
                    self._made_dirs.add(parent)
                tmp = tmp_name(path)
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except OSError as exc:
                remove_quietly(tmp_name(path))
                self._discard()
                raise WriteError(path, exc, RESUME_HINT) from None
            if len(self._digests) >= self.DIGESTS_KEPT:
                self._digests.pop(next(iter(self._digests)))
            self._digests[rel] = (len(data), hashlib.sha256(data).hexdigest())

    def _digest(self, rel: str) -> tuple[int, str]:
        got = self._digests.get(rel)
        if got is None:  # written by an earlier run, or long ago
            sha, size = sha256_file(os.path.join(self.directory, rel))
            got = (size, sha)
        return got

    def _add(self, enc: Encoded) -> None:
        assert self._records is not None
        if enc.record is None:
            raise ValueError("FilesWriter needs Encoded.record (use the files-layout encoder)")
        self.store_files(enc)
        for rel in record_image_paths(enc.record):
            try:
                size, sha = self._digest(rel)
            except OSError as exc:
                self._discard()
                raise WriteError(os.path.join(self.directory, rel), exc, RESUME_HINT) from None
            update_content_hash(self._content, rel, size, sha)
        self._records.append(enc.record)

    def _finish(self) -> ShardInfo:
        assert self._records is not None
        final = os.path.join(self.directory, self.name_for(self.index))
        data = dump_json(self._records, indent=None)
        try:
            os.makedirs(os.path.dirname(final), exist_ok=True)
        except OSError as exc:
            raise WriteError(os.path.dirname(final), exc, RESUME_HINT) from None
        os.sync()  # frame files reach the disk before the part that names them
        atomic_write_bytes(final, data, hint=RESUME_HINT)
        fsync_dir(os.path.dirname(final))
        info = ShardInfo(name=os.path.relpath(final, self.directory), index=self.index, count=len(self._keys),
                         sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), keys=list(self._keys),
                         content_sha256=self._content.hexdigest())
        self._records = None
        return info

    def _discard(self) -> None:
        # Frame files of uncommitted samples stay; no record names them, and the rerun
        # rewrites them when it redoes those samples.
        self._records = None


def record_image_paths(record: dict[str, Any]) -> list[str]:
    """The frame paths a MiniCPM-V record names, in order."""
    image = record.get("image")
    if isinstance(image, str):
        return [image]
    if isinstance(image, dict):
        return [str(v) for v in image.values()]
    return []


def update_content_hash(sha, rel: str, size: int, file_sha256: str) -> None:
    """Fold one frame file into a part's content hash (path, length, the file's sha256)."""
    sha.update(f"{rel}\0{size}\0{file_sha256}\n".encode("utf-8"))


def sha256_file(path: str, chunk: int = 1 << 20) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            buf = f.read(chunk)
            if not buf:
                break
            sha.update(buf)
            size += len(buf)
    return sha.hexdigest(), size
