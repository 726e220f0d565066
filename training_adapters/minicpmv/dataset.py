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

The shards are indexed once (tar headers only); items are then read by offset, so
the dataset is map-style and works with any sampler.
"""
from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
import torch.utils.data
from PIL import Image

PathLike = Union[str, os.PathLike]


@dataclass
class _Entry:
    key: str
    shard: str
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)  # ext -> (offset, size)


def shard_paths(source: Union[PathLike, Sequence[PathLike]]) -> list[str]:
    """Tar shards of a cache folder (in ``manifest.json`` order when it has one), a
    single tar, or a list of tars."""
    if not isinstance(source, (str, os.PathLike)):
        return [os.fspath(p) for p in source]
    source = os.fspath(source)
    if os.path.isfile(source):
        return [source]
    manifest = os.path.join(source, "manifest.json")
    if os.path.isfile(manifest):
        with open(manifest, encoding="utf-8") as f:
            shards = json.load(f).get("shards", [])
        return [os.path.join(source, s["name"]) for s in shards if s["name"].endswith(".tar")]
    return sorted(glob.glob(os.path.join(glob.escape(source), "*.tar")))


def index_shards(paths: Iterable[str]) -> list[_Entry]:
    """One entry per sample: where each of its members sits in which tar."""
    entries: list[_Entry] = []
    for path in paths:
        by_key: dict[str, _Entry] = {}
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                key, _, ext = member.name.partition(".")
                if not ext:
                    continue
                entry = by_key.get(key)
                if entry is None:
                    entry = by_key[key] = _Entry(key, path)
                    entries.append(entry)
                entry.parts[ext] = (member.offset_data, member.size)
    return entries


def _pil(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    return img.convert("RGB")


def _image_items(record: dict[str, Any]) -> list[tuple[str, str]]:
    image = record.get("image", {})
    if isinstance(image, str):
        return [("<image>", image)]
    return [(str(k), str(v)) for k, v in image.items()]


class MiniCPMVShards(torch.utils.data.Dataset):
    """Map-style dataset over cached minicpmv/idefics3 ``wds`` shards.

    ``dataset[i]`` -> ``{"key", "id"?, "images": {tag: PIL RGB}, "conversations"}``.
    """

    def __init__(self, source: Union[PathLike, Sequence[PathLike]]):
        self.paths = shard_paths(source)
        if not self.paths:
            raise FileNotFoundError(f"no tar shards found in {source!r}")
        self.entries = index_shards(self.paths)

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, entry: _Entry, ext: str) -> bytes:
        if ext not in entry.parts:
            raise KeyError(f"sample {entry.key!r} in {entry.shard} has no member {entry.key}.{ext}")
        offset, size = entry.parts[ext]
        with open(entry.shard, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def record(self, i: int) -> dict[str, Any]:
        """The stored model record (T2Vid JSON) of sample ``i``."""
        return json.loads(self._read(self.entries[i], "json").decode("utf-8"))

    def frames(self, i: int) -> dict[str, bytes]:
        """``{tag: JPEG bytes}`` of sample ``i``, in the record's order."""
        entry = self.entries[i]
        return {tag: self._read(entry, os.path.basename(path)) for tag, path in _image_items(self.record(i))}

    def __getitem__(self, i: int) -> dict[str, Any]:
        record = self.record(i)
        entry = self.entries[i]
        item = {"key": entry.key}
        if "id" in record:
            item["id"] = record["id"]
        item["images"] = {tag: _pil(self._read(entry, os.path.basename(path)))
                          for tag, path in _image_items(record)}
        item["conversations"] = record["conversations"]
        return item

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
        record = self.shards.record(i)
        files = {tag: io.BytesIO(data) for tag, data in self.shards.frames(i).items()}
        record["image"] = files["<image>"] if isinstance(record.get("image"), str) else files
        return record


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
    item = {"key": sample.key}
    if "id" in record:
        item["id"] = record["id"]
    item["images"] = {tag: Image.fromarray(np.ascontiguousarray(f)).convert("RGB") for tag, f in zip(tags, frames)}
    item["conversations"] = record["conversations"]
    return item


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
