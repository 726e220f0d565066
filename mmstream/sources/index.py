"""The record index: every position of every source, where its text lies in the
annotation file, and which decode group it belongs to.

    index = RecordIndex.build(config)      # one pass over the annotations, in the main process
    index.num_positions, index.num_groups
    index.members(g)                       # positions of group g's records, in file order
    index.item(p)                          # position p's Record (or SampleError), read again by offset

A **group** is the records whose media resolve to the same files (lexically, under
their media root) in the same source, so with the same sampling settings: their
media are planned and decoded once for all of them. A record without media, or one
that cannot be used, is a group of its own. Groups are numbered in order of their
first record, so a stream without shuffling keeps file order.

Memory: a few numpy arrays, 19 bytes per position plus 12 per group (about 30 MB for
LLaVA-Video-178K's 1.3M records), shared by forked DataLoader workers. Records are
not kept: a worker reads each one again from its byte span when it needs it, so a
multi-GB annotation file is never held in memory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import stat
import time
from array import array
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional, Union

import numpy as np

from ..config import Config, SourceConfig
from ..errors import BAD_JSON, UNREADABLE_TAIL, ConfigError, SampleError
from ..types import MediaRef, Record
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


#: Cost of a medium that has no size to go by (a record without media, pages rendered
#: from text, a missing file), in the unit of file bytes.
BASE_COST = 64 << 10


def media_cost(signature: Optional[tuple]) -> float:
    """A decode group's cost, roughly: the square root of its media's bytes (a frame
    folder: its entries' count times a typical frame), so that the split balances long
    videos. The root because capped sampling (24 frames of a long video) reads a bounded
    number of key-frame intervals, so work grows slower than bytes: on the benchmark
    set's measured decode times, splitting by the root gives 2 workers a mean makespan
    1.05x the ideal, by bytes 1.12x, by record count 1.13x (worst 1.45x). Every rank
    computes it from the same files, so every rank makes the same split."""
    if signature is None:
        return math.sqrt(BASE_COST)
    total = 0.0
    for kind, how, what in signature:
        if how == "text":
            total += BASE_COST
            continue
        try:
            st = os.stat(what)
        except OSError:
            total += BASE_COST
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                total += BASE_COST * len(os.listdir(what))
            except OSError:
                total += BASE_COST
        else:
            total += max(st.st_size, BASE_COST)
    return math.sqrt(total)


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
    """See the module docstring. Build with :meth:`build`."""

    def __init__(self, config: Config, sources: list[SourceSpan], source: np.ndarray, offset: np.ndarray,
                 length: np.ndarray, status: np.ndarray, group: np.ndarray,
                 position_cost: Optional[np.ndarray] = None):
        self.config = config
        self.sources = sources
        self.source = source  # uint16 [P]: source of each position
        self.offset = offset  # int64 [P]: byte offset of its text
        self.length = length  # int32 [P]: byte length (-1: an unreadable tail)
        self.status = status  # uint8 [P]: 0 ok, 1 bad_json, 2 unreadable_tail
        self.group = group  # int32 [P]: decode group of each position
        self.order = np.argsort(group, kind="stable").astype(np.int32)  # positions grouped, file order inside
        counts = np.bincount(group, minlength=int(group.max()) + 1 if len(group) else 0)
        self.group_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        # float32 [G]: what decoding each group costs, roughly (its media's bytes); splits balance on it
        self.group_cost = (np.bincount(group, weights=position_cost, minlength=len(counts)).astype(np.float32)
                           if position_cost is not None and len(group) else np.ones(len(counts), np.float32))
        self._files: dict[int, BinaryIO] = {}
        self._pid = os.getpid()

    # -- building -----------------------------------------------------------------
    @classmethod
    def build(cls, config: Config, *, progress: Optional[bool] = None) -> "RecordIndex":
        """One pass over every source's annotations (raises ConfigError for a missing,
        unreadable or non-JSON annotation file)."""
        from . import iter_source_spans

        t0 = time.monotonic()
        src_ids, offsets, lengths, statuses = array("H"), array("q"), array("i"), array("B")
        keys = array("Q")  # group key hash per position (0 for a position of its own)
        costs, costed = array("f"), set()  # each group's decode cost, at its first position
        spans: list[SourceSpan] = []
        pos = 0
        for s, src in enumerate(config.sources):
            first = pos
            local = local_annotations(src)
            scan_src = src if local == src.annotations else dataclasses.replace(src, annotations=local)
            for item, span in _with_progress(iter_source_spans(scan_src), scan_src, progress):
                src_ids.append(s)
                offsets.append(span.offset)
                lengths.append(min(span.length, _MAX_LENGTH))  # a bad span over 2 GiB: read_span does not read it
                statuses.append(_STATUS_CODE[span.status])
                sig = media_signature(item) if isinstance(item, Record) else None
                key = _key_hash(s, sig) | 1 if sig is not None else 0
                keys.append(key)
                if key == 0 or key not in costed:  # a group's cost, once: at its first record
                    costed.add(key)
                    costs.append(media_cost(sig))
                else:
                    costs.append(0.0)
                pos += 1
            spans.append(SourceSpan(src.name, local, first, pos - first))
        group = _group_ids(np.frombuffer(keys, dtype=np.uint64) if len(keys) else np.zeros(0, np.uint64))
        index = cls(config, spans, np.frombuffer(src_ids, np.uint16).copy(), np.frombuffer(offsets, np.int64).copy(),
                    np.frombuffer(lengths, np.int32).copy(), np.frombuffer(statuses, np.uint8).copy(), group,
                    np.frombuffer(costs, np.float32))
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
        return sum(a.nbytes for a in (self.source, self.offset, self.length, self.status, self.group,
                                      self.order, self.group_start, self.group_cost))

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

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}


def local_annotations(src: SourceConfig) -> str:
    """The annotation file to read: the path itself, or a local copy of a URL (made once,
    in ``sampling.storage.cache_dir`` or ``~/.cache/mmstream/annotations``), which the
    workers then read by offset without a request per record."""
    from .. import storage

    if not storage.is_url(src.annotations):
        return src.annotations
    conf = storage.settings(src.sampling.storage)
    folder = os.path.join(conf.cache_dir, "annotations") if conf.cache_dir else os.path.join(
        os.path.expanduser("~"), ".cache", "mmstream", "annotations")
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
        return _copy_annotations(src.annotations, stamp, conf, folder)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"cannot read annotation file {storage.redact(src.annotations)}: "
                          f"{storage.redact(exc)}") from None


def _copy_annotations(url: str, stamp: str, conf, folder: str) -> str:
    """The copy is named by the URL and the object's version (ETag / modification time),
    so an annotation file that changes is read again."""
    import hashlib

    from .. import storage

    digest = hashlib.sha1(f"{url}\0{stamp}".encode()).hexdigest()
    local = os.path.join(folder, digest + ".json")
    if os.path.exists(local):
        return local
    os.makedirs(folder, exist_ok=True)
    fs, path = storage.filesystem(url, conf)
    tmp = f"{local}.tmp-{os.getpid()}"
    try:
        fs.get_file(path, tmp)
        os.replace(tmp, local)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return local


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
