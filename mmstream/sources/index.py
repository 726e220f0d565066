"""The record index: every position of every source, where its text lies in the
annotation file, and which decode group it belongs to.

    index = RecordIndex.open(config)       # the node's cached index, or one pass over the annotations
    index.num_positions, index.num_groups
    index.members(g)                       # positions of group g's records, in file order
    index.item(p)                          # position p's Record (or SampleError), read again by offset

A **group** is the records whose media resolve to the same files (lexically, under
their media root) in the same source, so with the same sampling settings: their
media are planned and decoded once for all of them. A record without media, or one
that cannot be used, is a group of its own. Groups are numbered in order of their
first record, so a stream without shuffling keeps file order.

Each group also carries its media's **facts** (file sizes; an MP4's duration, frame and
key-frame counts and size from its ``moov`` box: :mod:`mmstream.media.facts`), from which
:mod:`mmstream.media.cost` estimates its decode cost under the source's sampling plan.

Memory: a few numpy arrays, 23 bytes per position plus about 70 per group (about 40 MB
for LLaVA-Video-178K's 1.3M records). :meth:`RecordIndex.open` saves them in the node's
cache (:mod:`.index_cache`) keyed by the annotation files and the config fields that
decide records and groups: one process per node builds it, every rank and worker maps
the same file (one copy in RAM), and a restart loads it instead of reading the
annotations again. Records are not kept: a worker reads each one again from its byte
span when it needs it, so a multi-GB annotation file is never held in memory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from array import array
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional, Union

import numpy as np

from ..config import Config, SourceConfig
from ..errors import BAD_JSON, UNREADABLE_TAIL, ConfigError, SampleError
from ..media.cost import FACTS_DTYPE, group_costs
from ..media.facts import media_facts
from ..types import Record
from .jsonstream import Span, read_span

log = logging.getLogger(__name__)

Item = Union[Record, SampleError]

_STATUS = ("ok", BAD_JSON, UNREADABLE_TAIL)
_STATUS_CODE = {s: i for i, s in enumerate(_STATUS)}
_MAX_LENGTH = (1 << 31) - 1  # what the int32 length column holds
#: Sources above this size show a progress bar while they are indexed (when stderr is a terminal).
PROGRESS_BYTES = 64 << 20


def media_signature(record: Record) -> Optional[tuple]:
    """What must be equal for two records of one source to share a decode: each
    medium's kind and its lexically resolved path (or, for pages rendered from text,
    the text). None for a record without media or with a path outside its root
    (it is then a group of its own)."""
    from ..media.resolve import locate

    if not record.media:
        return None
    parts = []
    for ref in record.media:
        if ref.text is not None:
            parts.append((ref.kind, "text", hashlib.blake2b(ref.text.encode("utf-8", "surrogatepass"),
                                                            digest_size=16).hexdigest()))
        elif ref.path is None:
            return None
        else:
            try:
                parts.append((ref.kind, "path", locate(ref.path, ref.root or os.getcwd())))
            except SampleError:
                return None
    return tuple(parts)


def _key_hash(source: int, signature: tuple) -> int:
    """A stable 64-bit hash (the same in every process, unlike ``hash()``)."""
    data = "\0".join([str(source)] + ["\1".join(part) for part in signature]).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@dataclass(frozen=True)
class SourceSpan:
    """Positions ``first .. first + count - 1`` of the global stream are source ``name``."""

    name: str
    path: str
    first: int
    count: int


class RecordIndex:
    """See the module docstring. Make one with :meth:`open` (cached) or :meth:`build`."""

    #: The arrays an index is made of (what the cache file holds).
    ARRAYS = ("source", "offset", "length", "status", "group", "order", "group_start", "facts")

    def __init__(self, config: Config, sources: list[SourceSpan], arrays: dict[str, np.ndarray],
                 cache: Optional[dict] = None):
        self.config = config
        self.sources = sources
        self.source = arrays["source"]  # uint16 [P]: source of each position
        self.offset = arrays["offset"]  # int64 [P]: byte offset of its text
        self.length = arrays["length"]  # int32 [P]: byte length (-1: an unreadable tail)
        self.status = arrays["status"]  # uint8 [P]: 0 ok, 1 bad_json, 2 unreadable_tail
        self.group = arrays["group"]  # int32 [P]: decode group of each position
        self.order = arrays["order"]  # int32 [P]: positions grouped, file order inside
        self.group_start = arrays["group_start"]  # int64 [G + 1]: group g is order[start[g]:start[g + 1]]
        self.facts = arrays["facts"]  # FACTS_DTYPE [G]: what the index read about each group's media
        # float32 [G]: what decoding each group costs (media.cost, under its source's sampling)
        self.group_cost = self._costs()
        #: where the arrays came from: {"status": built | loaded | off, "path": the cache file, "built": {...}}
        self.cache = cache or {"status": "off"}
        self._files: dict[int, BinaryIO] = {}
        self._pid = os.getpid()

    def _costs(self) -> np.ndarray:
        cost = np.zeros(self.num_groups, np.float32)
        if not self.num_groups:
            return cost
        group_source = self.source[self.order[self.group_start[:-1]]]
        for s, src in enumerate(self.config.sources):
            mine = group_source == s
            if mine.any():
                cost[mine] = group_costs(self.facts[mine], src.sampling)
        return cost

    # -- building -----------------------------------------------------------------
    @classmethod
    def open(cls, config: Config, *, progress: Optional[bool] = None, cache: bool = True) -> "RecordIndex":
        """The index of ``config``'s annotations: from the node's cache when it was built
        from the same files and config fields, else built here (one process per node: the
        others wait for it) and saved. ``cache=False`` builds it in this process and saves
        nothing. Raises ConfigError for a missing, unreadable or non-JSON annotation file."""
        from . import index_cache

        files = [_annotation_file(src) for src in config.sources]
        fresh = [_freshness(path, stamp) for path, stamp in files]
        if not cache or None in fresh:  # (an unreadable file: the build raises the ConfigError)
            return cls.build(config, progress=progress, files=[f[0] for f in files])
        identity = {"index": index_cache.FORMAT_VERSION, "sources": [_identity(src) for src in config.sources]}
        key = {"identity": identity, "files": fresh}
        path = index_cache.index_file(index_cache.cache_root(config.sampling.storage.cache_dir), identity)

        def build():
            index = cls.build(config, progress=progress, files=[f[0] for f in files])
            return ({name: getattr(index, name) for name in cls.ARRAYS},
                    {"sources": [dataclasses.astuple(s) for s in index.sources]})

        t0 = time.monotonic()
        arrays, meta, status = index_cache.load_or_build(path, key, build)
        index = cls(config, [SourceSpan(*s) for s in meta["sources"]], arrays,
                    {"status": status, "path": path, "built": meta.get("built"), "sha256": meta.get("sha256")})
        if status == "loaded":
            log.info("record index of %d records in %d decode groups loaded from %s in %.2f s",
                     index.num_positions, index.num_groups, path, time.monotonic() - t0)
        return index

    @classmethod
    def build(cls, config: Config, *, progress: Optional[bool] = None,
              files: Optional[list[str]] = None) -> "RecordIndex":
        """One pass over every source's annotations, in this process (``files``: the local
        annotation files, when the caller has them already)."""
        from . import iter_source_spans

        t0 = time.monotonic()
        src_ids, offsets, lengths, statuses = array("H"), array("q"), array("i"), array("B")
        keys = array("Q")  # group key hash per position (0 for a position of its own)
        facts = np.zeros(1024, FACTS_DTYPE)  # row r: the r-th group's media (groups number by first position)
        seen: set[int] = set()
        rows = 0
        spans: list[SourceSpan] = []
        pos = 0
        for s, src in enumerate(config.sources):
            first = pos
            local = files[s] if files is not None else local_annotations(src)
            scan_src = src if local == src.annotations else dataclasses.replace(src, annotations=local)
            for item, span in _with_progress(iter_source_spans(scan_src), scan_src, progress):
                src_ids.append(s)
                offsets.append(span.offset)
                lengths.append(min(span.length, _MAX_LENGTH))  # a bad span over 2 GiB: read_span does not read it
                statuses.append(_STATUS_CODE[span.status])
                sig = media_signature(item) if isinstance(item, Record) else None
                key = _key_hash(s, sig) | 1 if sig is not None else 0
                keys.append(key)
                if key == 0 or key not in seen:  # a new group: its media's facts, once
                    seen.add(key)
                    if rows == len(facts):
                        facts = np.concatenate([facts, np.zeros(len(facts), FACTS_DTYPE)])
                    if sig is not None:
                        facts[rows] = media_facts(sig)
                    rows += 1
                pos += 1
            spans.append(SourceSpan(src.name, local, first, pos - first))
        group = _group_ids(np.frombuffer(keys, dtype=np.uint64) if len(keys) else np.zeros(0, np.uint64))
        counts = np.bincount(group, minlength=int(group.max()) + 1 if len(group) else 0)
        arrays = {"source": np.frombuffer(src_ids, np.uint16).copy(), "offset": np.frombuffer(offsets, np.int64).copy(),
                  "length": np.frombuffer(lengths, np.int32).copy(), "status": np.frombuffer(statuses, np.uint8).copy(),
                  "group": group, "order": np.argsort(group, kind="stable").astype(np.int32),
                  "group_start": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                  "facts": facts[:rows].copy()}
        index = cls(config, spans, arrays)
        log.info("indexed %d records in %d decode groups from %d source(s) in %.1f s", index.num_positions,
                 index.num_groups, len(spans), time.monotonic() - t0)
        return index

    # -- reading ------------------------------------------------------------------
    @property
    def num_positions(self) -> int:
        return int(len(self.group))

    @property
    def num_groups(self) -> int:
        return int(len(self.group_start) - 1)

    def members(self, g: int) -> np.ndarray:
        """Positions of group ``g``, in file order."""
        return self.order[self.group_start[g]:self.group_start[g + 1]]

    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self.ARRAYS) + self.group_cost.nbytes

    def _file(self, s: int) -> BinaryIO:
        if self._pid != os.getpid():  # a forked worker: never share the parent's file offsets
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(s)
        if f is None:
            from .jsonstream import _open

            f = self._files[s] = _open(self.sources[s].path)
        return f

    def key(self, p: int) -> str:
        """The sample key of position ``p`` (without reading the record)."""
        from . import record_key

        src = self.sources[int(self.source[p])]
        return record_key(src.name, p - src.first)

    def item(self, p: int) -> Item:
        """Position ``p`` as the source gave it: a Record, or the SampleError it was."""
        from . import converter_for, limits_of, one_item, record_key

        s = int(self.source[p])
        src_span = self.sources[s]
        src = self.config.sources[s]
        span = Span(int(self.offset[p]), int(self.length[p]), _STATUS[int(self.status[p])])
        local = p - src_span.first
        obj = read_span(self._file(s), span, src_span.path, limits=limits_of(src))
        item = one_item(obj, record_key(src.name, local), local, src, converter_for(src))
        if isinstance(item, Record):
            item.index = p
        else:
            item.source = src.name
        return item

    def items(self) -> Iterator[Item]:
        """Every position in file order."""
        for p in range(self.num_positions):
            yield self.item(p)

    def source_counts(self) -> dict[str, int]:
        """Records read per source (every position, good or not)."""
        return {s.name: s.count for s in self.sources}

    def __reduce__(self):
        # pickled (a spawn or forkserver DataLoader worker, a Ray task): the arrays travel, and
        # where the node's cache file is still the same index the copy maps it instead
        return _restore, (self.config, self.sources, {name: getattr(self, name) for name in self.ARRAYS}, self.cache)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}


def _restore(config: Config, sources: list[SourceSpan], arrays: dict[str, np.ndarray], cache: dict) -> RecordIndex:
    from . import index_cache

    if cache.get("path") and cache.get("sha256"):
        arrays = index_cache.remap(cache["path"], cache["sha256"]) or arrays
    return RecordIndex(config, sources, arrays, cache)


def local_annotations(src: SourceConfig) -> str:
    """The annotation file to read: the path itself, or a local copy of a URL (made once
    per node, in ``sampling.storage.cache_dir`` or ``~/.cache/mmstream/annotations``), which
    the workers then read by offset without a request per record."""
    return _annotation_file(src)[0]


def _annotation_file(src: SourceConfig) -> tuple[str, Optional[str]]:
    """(local file, the URL's version stamp: ETag or modification time; None for a path)."""
    from .. import storage
    from .index_cache import cache_root

    if not storage.is_url(src.annotations):
        return src.annotations, None
    conf = storage.settings(src.sampling.storage)
    folder = os.path.join(cache_root(conf.cache_dir), "annotations")
    try:
        fs, path = storage.filesystem(src.annotations, conf)
        signature = fs.info(path)
        stamp = str(signature.get("ETag") or signature.get("etag") or signature.get("LastModified")
                    or signature.get("size"))
    except FileNotFoundError:
        raise ConfigError(f"annotation file {storage.redact(src.annotations)} does not exist") from None
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"cannot read annotation file {storage.redact(src.annotations)}: "
                          f"{storage.redact(exc)}") from None
    try:
        return _copy_annotations(src.annotations, stamp, conf, folder), stamp
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"cannot read annotation file {storage.redact(src.annotations)}: "
                          f"{storage.redact(exc)}") from None


def _copy_annotations(url: str, stamp: str, conf, folder: str) -> str:
    """The copy is named by the URL and the object's version (ETag / modification time),
    so an annotation file that changes is read again. One process per node downloads it
    (under a lock); the others that start meanwhile wait for its copy."""
    from .. import storage
    from ..sinks.manifest import file_lock

    digest = hashlib.sha1(f"{url}\0{stamp}".encode()).hexdigest()
    local = os.path.join(folder, digest + ".json")
    if os.path.exists(local):
        return local
    os.makedirs(folder, exist_ok=True)
    with file_lock(folder, digest + ".lock", what="downloading annotations", blocking=True):
        if os.path.exists(local):  # downloaded by the process this one waited for
            return local
        fs, path = storage.filesystem(url, conf)
        tmp = f"{local}.tmp-{os.getpid()}"
        try:
            fs.get_file(path, tmp)
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return local


def _identity(src: SourceConfig) -> dict:
    """The config fields that decide a source's records and groups (and their keys)."""
    from .. import storage

    def where(p: Optional[str]) -> Optional[str]:
        return p if p is None or storage.is_url(p) else os.path.abspath(p)

    return {"name": src.name, "format": src.format, "annotations": where(src.annotations),
            "media_root": where(src.media_root), "limit": src.limit,
            # the record bounds decide where a damaged or oversized record ends (jsonstream)
            "max_record_mb": src.max_record_mb, "max_json_depth": src.max_json_depth}


def _freshness(path: str, stamp: Optional[str]) -> Optional[dict]:
    """What changes when an annotation file does: its size, modification and change
    times and inode (a file replaced by a rename), and a URL's ETag; None when it cannot
    be read (the build then says why)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "inode": st.st_ino, "stamp": stamp}


def _group_ids(keys: np.ndarray) -> np.ndarray:
    """Group number per position: equal non-zero keys share one, every zero key is alone;
    numbered in order of each group's first position."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int32)
    positions = np.arange(n, dtype=np.int64)
    shared = keys != 0
    first_of = np.empty(n, np.int64)  # first position of each position's group
    first_of[~shared] = positions[~shared]
    if shared.any():
        _, first, inverse = np.unique(keys[shared], return_index=True, return_inverse=True)
        first_of[shared] = positions[shared][first][inverse]
    firsts = np.unique(first_of)  # sorted: group number = rank of the first position
    return np.searchsorted(firsts, first_of).astype(np.int32)


def _with_progress(items, src: SourceConfig, progress: Optional[bool]):
    try:
        size = os.path.getsize(src.annotations)
    except OSError:
        size = 0
    if progress is False or (progress is None and size < PROGRESS_BYTES):
        yield from items
        return
    from tqdm import tqdm

    with tqdm(total=size, unit="B", unit_scale=True, desc=f"index {src.name}", delay=1.0,
              disable=None if progress is None else not progress) as bar:
        done = 0
        for item, span in items:
            end = span.offset + max(span.length, 0)
            if end - done > (1 << 20):
                bar.update(end - done)
                done = end
            yield item, span
        bar.update(max(0, size - done))


__all__ = ["RecordIndex", "SourceSpan", "media_signature"]
