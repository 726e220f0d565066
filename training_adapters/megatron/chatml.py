"""Load mmstream's megatron shards with megatron-energon 7.x.

The shards hold Pai-Megatron-Patch's ChatML layout (``KEY.jpgs``, ``KEY.videos``,
``KEY.json``) and ``mmstream finalize`` has energon index them as a
``CrudeWebdataset``. Pai's own ``ChatMLWebdataset`` class no longer loads on energon
7.x; this module is what replaces it: a typed sample and the cooker that builds it::

    from megatron.energon import WorkerConfig, get_train_dataset, get_savable_loader
    from training_adapters.megatron import ChatMLTaskEncoder

    worker_config = WorkerConfig(rank=rank, world_size=world_size, num_workers=4)
    ds = get_train_dataset("/data/cache", worker_config=worker_config, batch_size=None,
                           shuffle_buffer_size=100, max_samples_per_sequence=100,
                           task_encoder=ChatMLTaskEncoder())
    for sample in get_savable_loader(ds):
        sample.videos[0]            # uint8 tensor [T, 3, H, W], T even
        sample.conversation         # [{"from": "human", "value": "<video>\\n..."}, ...]
        sample.second_per_grid_ts   # [2.0]

A model's own task encoder subclasses :class:`ChatMLTaskEncoder` (or lists
``Cooker(cook_chatml)`` in its ``cookers``) and overrides ``encode_sample`` /
``batch``; the frames arrive decoded, in RGB.

``.jpgs``/``.videos`` are pickles (the Pai format): load only shards you trust.
"""
from __future__ import annotations

import io
import json
import pickle
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from megatron.energon import Cooker, DefaultTaskEncoder, Sample, basic_sample_keys, stateless
from megatron.energon.edataclass import edataclass

#: Tar member extensions of one sample (REFERENCE 6).
IMAGES_PART = "jpgs"
VIDEOS_PART = "videos"
JSON_PART = "json"


@edataclass
class ChatMLSample(Sample):
    """One cooked sample.

    ``images``: one uint8 tensor ``[3, H, W]`` per ``<image>`` tag; ``videos``: one
    uint8 tensor ``[T, 3, H, W]`` per ``<video>`` tag (RGB, T even);
    ``conversation``: the ChatML turns ``{"from": "human"|"gpt", "value": str}``;
    ``second_per_grid_ts``: seconds per temporal patch, one per video.
    """

    images: list[torch.Tensor]
    videos: list[torch.Tensor]
    conversation: list[dict[str, Any]]
    second_per_grid_ts: list[float]
    tokens: Optional[dict[str, int]] = None  # the exact counts mmstream stored, when it did


def decode_jpeg(data: bytes) -> torch.Tensor:
    """JPEG bytes -> uint8 RGB tensor ``[3, H, W]``."""
    with Image.open(io.BytesIO(data)) as img:
        array = np.asarray(img.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _load(part: Any) -> Any:
    """A pickled part: raw bytes (default energon decoder) or already loaded."""
    if isinstance(part, (bytes, bytearray, memoryview)):
        return pickle.loads(bytes(part))
    return part


def _record(part: Any) -> dict[str, Any]:
    if isinstance(part, (bytes, bytearray)):
        part = json.loads(bytes(part).decode("utf-8"))
    elif isinstance(part, str):
        part = json.loads(part)
    if not isinstance(part, dict):
        raise ValueError(f"the .{JSON_PART} member is not a JSON object")
    return part


@stateless
def cook_chatml(sample: dict) -> ChatMLSample:
    """Crude ``{"jpgs", "videos", "json"}`` dict -> :class:`ChatMLSample`.

    Raises ``ValueError`` for a sample that breaks the format (energon's error handler
    decides whether that skips the sample or stops training).
    """
    for part in (IMAGES_PART, VIDEOS_PART, JSON_PART):
        if part not in sample:
            raise ValueError(f"sample {sample.get('__key__')!r} has no .{part} member")
    record = _record(sample[JSON_PART])
    images = [decode_jpeg(b) for b in _load(sample[IMAGES_PART])]
    videos = []
    for frames in _load(sample[VIDEOS_PART]):
        if len(frames) == 0 or len(frames) % 2:
            raise ValueError(f"sample {sample.get('__key__')!r}: a video has {len(frames)} frames (must be even)")
        videos.append(torch.stack([decode_jpeg(b) for b in frames]))
    sgt = [float(x) for x in record.get("second_per_grid_ts", [])]
    if len(sgt) != len(videos):
        raise ValueError(f"sample {sample.get('__key__')!r}: {len(videos)} video(s) but "
                         f"{len(sgt)} second_per_grid_ts value(s)")
    return ChatMLSample(**basic_sample_keys(sample), images=images, videos=videos,
                        conversation=list(record.get("conversations", [])), second_per_grid_ts=sgt,
                        tokens=record.get("tokens"))


@edataclass
class ChatMLRawSample(Sample):
    """A sample before its frames are decoded: the JPEG bytes as stored, the conversation,
    ``second_per_grid_ts`` and ``tokens`` (the exact counts mmstream wrote), so that
    packing can choose without decoding a frame."""

    images_jpeg: list[bytes]
    videos_jpeg: list[list[bytes]]
    conversation: list[dict[str, Any]]
    second_per_grid_ts: list[float]
    tokens: dict[str, int]


@edataclass
class ChatMLPack(Sample):
    """Samples packed into one sequence of at most ``max_tokens`` tokens: sample i's tokens
    are ``[offsets[i], offsets[i] + lengths[i])``."""

    samples: list[ChatMLSample]
    lengths: list[int]
    offsets: list[int]
    total: int


@stateless
def cook_chatml_raw(sample: dict) -> ChatMLRawSample:
    """Crude dict -> :class:`ChatMLRawSample` (frames left as JPEG bytes)."""
    for part in (IMAGES_PART, VIDEOS_PART, JSON_PART):
        if part not in sample:
            raise ValueError(f"sample {sample.get('__key__')!r} has no .{part} member")
    record = _record(sample[JSON_PART])
    tokens = record.get("tokens")
    if not isinstance(tokens, dict) or "total" not in tokens:
        raise ValueError(f"sample {sample.get('__key__')!r} has no token counts: cache it with a model tokenizer "
                         f"configured (mmstream writes them into KEY.json)")
    return ChatMLRawSample(**basic_sample_keys(sample), images_jpeg=list(_load(sample[IMAGES_PART])),
                           videos_jpeg=[list(v) for v in _load(sample[VIDEOS_PART])],
                           conversation=list(record.get("conversations", [])),
                           second_per_grid_ts=[float(x) for x in record.get("second_per_grid_ts", [])],
                           tokens={k: int(v) for k, v in tokens.items()})


def decode_raw(raw: ChatMLRawSample) -> ChatMLSample:
    """The frames of a raw sample decoded (what :func:`cook_chatml` makes at once)."""
    videos = []
    for frames in raw.videos_jpeg:
        if len(frames) == 0 or len(frames) % 2:
            raise ValueError(f"sample {raw.__key__!r}: a video has {len(frames)} frames (must be even)")
        videos.append(torch.stack([decode_jpeg(b) for b in frames]))
    if len(raw.second_per_grid_ts) != len(videos):
        raise ValueError(f"sample {raw.__key__!r}: {len(videos)} video(s) but "
                         f"{len(raw.second_per_grid_ts)} second_per_grid_ts value(s)")
    return ChatMLSample.derive_from(raw, images=[decode_jpeg(b) for b in raw.images_jpeg], videos=videos,
                                    conversation=raw.conversation, second_per_grid_ts=raw.second_per_grid_ts,
                                    tokens=raw.tokens)


class ChatMLTaskEncoder(DefaultTaskEncoder):
    """Cooks every crude sample with :func:`cook_chatml`; batches are lists.

    ``subflavors``: cook only crude samples whose subflavors match (for metadatasets
    that mix this folder with others).
    """

    def __init__(self, *, subflavors: Optional[dict[str, Any]] = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.cookers = [Cooker(cook_chatml, has_subflavors=subflavors)]


class ChatMLPackingTaskEncoder(DefaultTaskEncoder):
    """energon's packing hooks over mmstream's token counts: use with
    ``get_train_dataset(..., packing_buffer_size=N, task_encoder=ChatMLPackingTaskEncoder(max_tokens))``.

    The cooker leaves frames as JPEG bytes; ``select_samples_to_pack`` packs a full buffer
    first-fit decreasing by each sample's stored ``tokens["total"]`` (mmstream's own
    :func:`mmstream.pack.first_fit`), so choosing decodes nothing; ``postencode_sample``
    decodes the frames of the chosen samples; ``pack_selected_samples`` makes a
    :class:`ChatMLPack`. A sample longer than ``max_tokens`` is a pack of its own (cache
    with ``filter.max_tokens`` to keep it from happening).
    """

    def __init__(self, max_tokens: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.max_tokens = int(max_tokens)
        self.cookers = [Cooker(cook_chatml_raw)]

    def select_samples_to_pack(self, samples: list[ChatMLRawSample]) -> list[list[ChatMLRawSample]]:
        from mmstream.pack import first_fit

        return [[samples[i] for i in g] for g in first_fit([s.tokens["total"] for s in samples], self.max_tokens)]

    @stateless
    def postencode_sample(self, sample: ChatMLRawSample) -> ChatMLSample:
        return decode_raw(sample)

    @stateless
    def pack_selected_samples(self, samples: list[ChatMLSample]) -> ChatMLPack:
        lengths = [int(s.tokens["total"]) for s in samples]
        return ChatMLPack.derive_from(samples[0], samples=samples, lengths=lengths,
                                      offsets=[sum(lengths[:i]) for i in range(len(lengths))], total=sum(lengths))

    def batch(self, samples):
        return samples
