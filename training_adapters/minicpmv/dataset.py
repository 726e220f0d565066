"""MiniCPM-V finetuning from mmstream's cached ``wds`` shards or from the live stream.

MiniCPM-V's ``finetune.py`` loads ``--data_path`` with ``json.load`` and its
``SupervisedDataset`` opens every ``record["image"][tag]`` with
``PIL.Image.open(...).convert("RGB")``. Two ways to feed it without that JSON:

* unmodified ``SupervisedDataset``: pass ``MiniCPMVShards(dir).raw_data()`` where the
  script passes the loaded JSON list; each record's image values are in-memory JPEG
  files, which ``Image.open`` reads like paths::

      raw = MiniCPMVShards("/data/cache").raw_data()
      train_dataset = SupervisedDataset(raw, transform, tokenizer, slice_config, ...)

* your own ``__getitem__``: ``MiniCPMVShards(dir)[i]`` (or iterating
  ``MiniCPMVStream(StreamingDataset(cfg))``) gives what ``SupervisedDataset`` builds
  before its ``preprocess`` call::

      {"key": ..., "id": ..., "images": {"<image_00>": PIL.Image (RGB), ...},
       "conversations": [{"role": "user", "content": "<image_00>\\n...question"}, ...]}

The shards are read by wids, webdataset's indexed reader (``wids.ShardListDataset``):
the dataset is map-style and works with any sampler, over a local folder or a bucket
(``MiniCPMVShards("s3://bucket/cache", storage_options={...})``: each shard is copied
to ``cache_dir`` once, through fsspec). :class:`MiniCPMVShardStream` streams the same
items through webdataset's tar iterators instead. Before wids opens a shard its
headers are checked (:mod:`mmstream.sinks.tarscan`): a link, a device, a member
name that climbs out or one larger than the shard is refused with a clear error
(the stream skips such members and counts them); nothing is ever extracted to disk.
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
import torch.utils.data
from PIL import Image

from mmstream import storage
from mmstream.config import StorageConfig
from mmstream.errors import MmstreamError
from mmstream.sinks.manifest import MANIFEST, WIDS_DESCRIPTOR  # what mmstream cache writes
from mmstream.sinks.tarscan import name_problem, shard_keys

PathLike = Union[str, os.PathLike]

log = logging.getLogger(__name__)

#: Shards wids keeps open (memory-mapped) at once per process.
LRU_SHARDS = 32
#: Where shards in a bucket are copied on first use (``cache_dir`` overrides it).
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "mmstream", "shards")


def _join(base: str, rel: str) -> str:
    if storage.is_url(rel) or os.path.isabs(rel):
        return rel
    bad = name_problem(rel)
    if bad:
        raise MmstreamError(f"shard list entry {rel!r}: {bad}")
    return f"{base.rstrip('/')}/{rel}" if storage.is_url(base) else os.path.join(base, rel)


def _read_json(path: str, conf) -> Any:
    with storage.using(conf):
        return json.loads(storage.read_bytes(path))


def _exists(path: str, conf) -> bool:
    if not storage.is_url(path):
        return os.path.isfile(storage.local_path(path))
    with storage.using(conf):
        return storage.kind_of(path) == "file"


def shard_list(source: Union[PathLike, Sequence[PathLike]],
               storage_options: Optional[dict] = None) -> list[dict[str, Any]]:
    """``[{"url", "nsamples", "bytes", "sha256"}]`` of a cache: its ``wids.json`` (or a
    wids descriptor named directly), else its ``manifest.json``, else the ``*.tar`` of a
    local folder; a single tar or a list of tars. The values are None where nothing
    lists them (a shard's own headers are then counted)."""
    conf = storage.settings(StorageConfig(options=dict(storage_options or {})))
    if not isinstance(source, (str, os.PathLike)):
        return [{"url": os.fspath(p), "nsamples": None, "bytes": None, "sha256": None} for p in source]
    source = storage.local_path(os.fspath(source))
    if source.endswith(".tar"):
        return [{"url": source, "nsamples": None, "bytes": None, "sha256": None}]
    if source.endswith(".json"):
        desc, base = source, source.rsplit("/", 1)[0] if storage.is_url(source) else os.path.dirname(source)
    else:
        base = source.rstrip("/")
        desc = _join(base, WIDS_DESCRIPTOR)
        if not _exists(desc, conf):
            manifest = _join(base, MANIFEST)
            if _exists(manifest, conf):
                shards = _read_json(manifest, conf).get("shards", [])
                return [{"url": _join(base, s["name"]), "nsamples": int(s["count"]), "bytes": int(s["bytes"]),
                         "sha256": s.get("sha256")} for s in shards if s["name"].endswith(".tar")]
            if storage.is_url(base):
                raise FileNotFoundError(f"{storage.redact(base)} has neither {WIDS_DESCRIPTOR} nor {MANIFEST}")
            return [{"url": p, "nsamples": None, "bytes": None, "sha256": None}
                    for p in sorted(glob.glob(os.path.join(glob.escape(base), "*.tar")))]
    spec = _read_json(desc, conf)
    if not isinstance(spec, dict) or spec.get("wids_version") != 1 or not isinstance(spec.get("shardlist"), list):
        raise MmstreamError(f"{storage.redact(desc)} is not a wids shard list (wids_version 1, shardlist)")
    return [{"url": _join(base, s["url"]), "nsamples": int(s["nsamples"]),
             "bytes": int(s["filesize"]) if s.get("filesize") is not None else None, "sha256": s.get("sha256")}
            for s in spec["shardlist"]]


def shard_paths(source: Union[PathLike, Sequence[PathLike]], storage_options: Optional[dict] = None) -> list[str]:
    """Tar shards of a cache (in ``wids.json``/``manifest.json`` order when it has one),
    a single tar, or a list of tars: paths or URLs."""
    return [s["url"] for s in shard_list(source, storage_options)]


def _remove_links(folder: str, pid: int) -> None:
    if os.getpid() == pid:  # not in a forked worker that inherited the object
        shutil.rmtree(folder, ignore_errors=True)


class _CheckedShards:
    """wids' ``localname``: the local file wids opens for a shard URL, its headers
    checked first (:func:`mmstream.sinks.tarscan.shard_keys`), its sample count too.

    A bucket's shard is copied to ``cache_dir`` once (fsspec, shared by the processes
    of a node; in a folder named by its sha256 when the shard list gives it). A local
    shard is opened where it is, through a link in a private folder: wids writes a lock
    file beside the name it is given, and a cache folder may be read-only.
    """

    def __init__(self, shards: list[dict[str, Any]], storage_options: Optional[dict], cache_dir: Optional[str]):
        self.shards = {s["url"]: s for s in shards}
        self.order = {s["url"]: i for i, s in enumerate(shards)}
        self.conf = storage.settings(StorageConfig(options=dict(storage_options or {}), cache_max_gb=None))
        self.cache_dir = cache_dir or DEFAULT_CACHE_DIR
        self.keys: dict[str, list[str]] = {}
        self._links = tempfile.mkdtemp(prefix="mmstream-wids-")
        self._cleanup = weakref.finalize(self, _remove_links, self._links, os.getpid())

    def __call__(self, url: str) -> str:
        entry = self.shards[url]
        if storage.is_url(url):  # a copy per content (a rerun with --no-resume reuses shard names)
            folder = os.path.join(self.cache_dir, entry["sha256"][:16]) if entry.get("sha256") else self.cache_dir
            with storage.using(None):
                path = storage.cached_copy(url, self.conf, folder=folder)
        else:
            path = os.path.join(self._links, f"{self.order[url]:06d}-{os.path.basename(url)}")
            if not os.path.lexists(path):
                os.symlink(os.path.abspath(url), path)
        if url not in self.keys:
            keys = shard_keys(path, limit=entry.get("bytes"), name=storage.redact(url))
            if entry.get("nsamples") is not None and len(keys) != entry["nsamples"]:
                raise MmstreamError(f"{storage.redact(url)}: {len(keys)} sample(s), the shard list says "
                                    f"{entry['nsamples']}; run `mmstream verify`")
            self.keys[url] = keys
        return path

    def count(self, url: str) -> int:
        """Samples in a shard the list does not count (its headers read, checked)."""
        self(url)
        return len(self.keys[url])


def _pil(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    return img.convert("RGB")


def _image_items(record: dict[str, Any]) -> list[tuple[str, str]]:
    image = record.get("image", {})
    if isinstance(image, str):
        return [("<image>", image)]
    return [(str(k), str(v)) for k, v in image.items()]


def _member(sample: dict[str, Any], ext: str) -> bytes:
    """A member's bytes from a wids sample (``{".json": file, ...}``) or a webdataset one
    (``{"json": bytes, ...}``)."""
    value = sample.get("." + ext, sample.get(ext))
    if value is None:
        raise KeyError(f"sample {sample.get('__key__')!r} has no member {sample.get('__key__')}.{ext}")
    return value.getvalue() if isinstance(value, io.BytesIO) else bytes(value)


def _record(sample: dict[str, Any]) -> dict[str, Any]:
    return json.loads(_member(sample, "json").decode("utf-8"))


def _frames(sample: dict[str, Any], record: dict[str, Any]) -> dict[str, bytes]:
    return {tag: _member(sample, os.path.basename(path)) for tag, path in _image_items(record)}


def _item(sample: dict[str, Any]) -> dict[str, Any]:
    record = _record(sample)
    return _make_item(sample["__key__"], record, {tag: _pil(data) for tag, data in _frames(sample, record).items()})


def _make_item(key: str, record: dict[str, Any], images: dict[str, Any]) -> dict[str, Any]:
    """The item T2Vid's ``SupervisedDataset`` takes: key, the record's id (when it has one),
    the images by tag, the conversations."""
    item = {"key": key}
    if "id" in record:
        item["id"] = record["id"]
    item["images"] = images
    item["conversations"] = record["conversations"]
    return item


class MiniCPMVShards(torch.utils.data.Dataset):
    """Map-style dataset over cached minicpmv/idefics3 ``wds`` shards, read by
    ``wids.ShardListDataset``.

    ``dataset[i]`` -> ``{"key", "id"?, "images": {tag: PIL RGB}, "conversations"}``.
    ``source``: a cache folder or ``s3://...`` prefix, its ``wids.json``, a tar, or a
    list of tars; ``storage_options``: fsspec options of a bucket (endpoint, keys);
    ``cache_dir``: where a bucket's shards are copied.
    """

    def __init__(self, source: Union[PathLike, Sequence[PathLike]], *, storage_options: Optional[dict] = None,
                 cache_dir: Optional[str] = None):
        self.storage_options = dict(storage_options or {})
        self.cache_dir = cache_dir
        self.shards = shard_list(source, self.storage_options)
        if not self.shards:
            raise FileNotFoundError(f"no tar shards found in {source!r}")
        self.paths = [s["url"] for s in self.shards]
        self._files: Optional[_CheckedShards] = None
        self._wids: Any = None
        self._pid = -1
        uncounted = [s for s in self.shards if s["nsamples"] is None]
        if uncounted:  # tars that no list counts: their headers are read now (and checked)
            for s in uncounted:
                s["nsamples"] = self._checked().count(s["url"])
        self._length = sum(int(s["nsamples"]) for s in self.shards)

    def _checked(self) -> _CheckedShards:
        if self._files is None or self._pid != os.getpid():
            self._files = _CheckedShards(self.shards, self.storage_options, self.cache_dir)
            self._wids, self._pid = None, os.getpid()
        return self._files

    def _dataset(self):
        """The wids dataset of this process (built on first use, again in a new worker)."""
        files = self._checked()
        if self._wids is None:
            import wids

            with contextlib.redirect_stderr(io.StringIO()):  # its constructor prints a summary line
                self._wids = wids.ShardListDataset(
                    [{"url": s["url"], "nsamples": int(s["nsamples"])} for s in self.shards if s["nsamples"]],
                    localname=files, transformations=[], lru_size=min(LRU_SHARDS, len(self.shards)))
        return self._wids

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_files=None, _wids=None, _pid=-1)  # open shards stay with their process
        return state

    def __len__(self) -> int:
        return self._length

    def sample(self, i: int) -> dict[str, Any]:
        """The wids sample ``i``: ``{"__key__", ".json": file, ".00000.jpg": file, ...}``."""
        if not 0 <= i < self._length:
            raise IndexError(f"index {i} out of range for {self._length} sample(s)")
        return self._dataset()[i]

    def record(self, i: int) -> dict[str, Any]:
        """The stored model record (T2Vid JSON) of sample ``i``."""
        return _record(self.sample(i))

    def frames(self, i: int) -> dict[str, bytes]:
        """``{tag: JPEG bytes}`` of sample ``i``, in the record's order."""
        sample = self.sample(i)
        return _frames(sample, _record(sample))

    def __getitem__(self, i: int) -> dict[str, Any]:
        return _item(self.sample(i))

    def raw_data(self) -> "RawData":
        """A stand-in for the list ``finetune.py`` loads from ``--data_path``."""
        return RawData(self)


class RawData(Sequence):
    """``raw_data[i]`` is the T2Vid record with in-memory JPEG files as image values
    (``PIL.Image.open`` accepts them where the JSON had paths)."""

    def __init__(self, shards: MiniCPMVShards):
        self.shards = shards

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        sample = self.shards.sample(i)
        record = _record(sample)
        files = {tag: io.BytesIO(data) for tag, data in _frames(sample, record).items()}
        record["image"] = files["<image>"] if isinstance(record.get("image"), str) else files
        return record


class MiniCPMVShardStream(torch.utils.data.IterableDataset):
    """The same items as :class:`MiniCPMVShards`, streamed shard after shard through
    webdataset's tar iterators (shards split over ranks and DataLoader workers, as
    ``wds.WebDataset`` splits them); a bucket's shards are read through fsspec.

    A member whose name is absolute or climbs out is skipped unread and counted
    (``skipped``, and a warning per shard); links, devices and folders are never read
    (webdataset reads regular files only); a member that claims more bytes than the
    stream holds ends its shard with a warning.
    """

    def __init__(self, source: Union[PathLike, Sequence[PathLike]], *, storage_options: Optional[dict] = None):
        super().__init__()
        self.storage_options = dict(storage_options or {})
        self.paths = shard_paths(source, self.storage_options)
        self.skipped = 0

    def _open(self, url: str):
        if not storage.is_url(url):
            return open(url, "rb")
        conf = storage.settings(StorageConfig(options=self.storage_options))
        fs, inner = storage.filesystem(url, conf)
        return fs.open(inner, "rb")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds
        from webdataset.tariterators import group_by_keys, tar_file_expander

        skipped: dict[str, int] = {}

        def safe(name: str) -> bool:
            if name_problem(name) is None:
                return True
            skipped[current[0]] = skipped.get(current[0], 0) + 1
            self.skipped += 1
            return False

        def failed(exn: Exception) -> bool:
            log.warning("%s: %s; the rest of this shard is skipped", storage.redact(current[0]), exn)
            return True

        current = [""]

        def streams():
            for shard in wds.split_by_worker(wds.split_by_node([{"url": u} for u in self.paths])):
                current[0] = shard["url"]
                with self._open(shard["url"]) as f:
                    yield dict(shard, stream=f)
                if skipped.get(shard["url"]):
                    log.warning("%s: %d member(s) with unsafe names skipped", storage.redact(shard["url"]),
                                skipped[shard["url"]])

        files = tar_file_expander(streams(), handler=failed, select_files=safe)
        for sample in group_by_keys(files, handler=failed):
            yield _item(sample)


def sample_to_item(sample: Any) -> dict[str, Any]:
    """An mmstream :class:`~mmstream.types.Sample` (with a MiniCPM-V/Idefics3 model
    record) -> the item :class:`MiniCPMVShards` yields, frames as PIL images."""
    record = sample.model_record
    if not isinstance(record, dict) or "conversations" not in record:
        raise ValueError(f"sample {sample.key!r} has no MiniCPM-V model record; configure `model:`")
    frames = [f for clip in sample.clips for f in clip.frames]
    tags = [tag for tag, _ in _image_items(record)]
    if len(tags) != len(frames):
        raise ValueError(f"sample {sample.key!r}: record names {len(tags)} image(s), sample has {len(frames)} frame(s)")
    return _make_item(sample.key, record, {tag: Image.fromarray(np.ascontiguousarray(f)).convert("RGB")
                                           for tag, f in zip(tags, frames)})


class MiniCPMVStream(torch.utils.data.IterableDataset):
    """The live stream as MiniCPM-V items: a thin wrapper over an iterable of Samples
    (e.g. :class:`mmstream.StreamingDataset`); Drops are skipped."""

    def __init__(self, samples: Iterable[Any]):
        super().__init__()
        self.samples = samples

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample in self.samples:
            if getattr(sample, "clips", None) is None:
                continue  # a Drop
            yield sample_to_item(sample)


def open_images(record: dict[str, Any], root: Optional[str] = None) -> dict[str, Image.Image]:
    """``{tag: PIL RGB}`` of a ``files``-layout record (what ``SupervisedDataset`` opens)."""
    out = {}
    for tag, path in _image_items(record):
        if root is not None and not os.path.isabs(path):
            path = os.path.join(root, path)
        with Image.open(path) as img:
            out[tag] = img.convert("RGB")
    return out
