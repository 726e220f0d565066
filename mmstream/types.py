"""Typed records that travel between the pipeline stages.

source -> media -> format -> budget -> sink

A source yields :class:`Record` (annotation only, nothing decoded). The media stage
turns each :class:`MediaRef` into a :class:`Clip` of decoded frames. A :class:`Sample`
is what the dataset yields: the record, its clips and, once a model is configured,
the formatted training record and its token counts. A :class:`Drop` stands in for a
sample that was skipped, with the reason that was counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import numpy as np

MediaKind = Literal["video", "image", "frames", "pages"]
Role = Literal["system", "user", "assistant"]

#: Media tags as they appear in normalised turns (whatever the source wrote).
IMAGE_TAG = "<image>"
VIDEO_TAG = "<video>"


@dataclass(frozen=True)
class Turn:
    role: Role
    content: str


@dataclass(frozen=True)
class MediaRef:
    """One media item as the annotation names it, before anything is opened.

    ``kind`` is what the annotation means: ``video`` (a video file, or a frame folder
    standing in for it), ``image``, ``frames`` (an explicit frame folder) or ``pages``
    (T2Vid text pages: a folder of rendered pages, or ``text`` to render on the fly).
    ``path`` is as written in the annotation (resolved later against ``root``).
    """

    kind: MediaKind
    path: Optional[str]
    root: Optional[str] = None
    text: Optional[str] = None  # pages rendered from text (T2Vid raw synthetic)


@dataclass
class Record:
    """One normalised annotation record.

    ``key`` is stable across runs, unique across sources and contains no dot (it is
    a WebDataset key). ``turns`` hold the conversation with ``<image>``/``<video>``
    tags in place; ``media`` lists the media in the order their tags appear.
    ``index`` is the record's position in the global (unshuffled) stream.
    """

    key: str
    source: str
    turns: list[Turn]
    media: list[MediaRef]
    index: int = -1
    id: Optional[str] = None  # the annotation's own id, when it has one
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class MediaPlan:
    """What will be decoded for one media item, known from container metadata alone.

    Built before any frame is decoded, so that length filters can drop a sample
    without paying for its decode. ``width``/``height`` are the output frame size
    (after the configured resize); ``indices`` are positions in the source's
    presentation order (may repeat, like ffmpeg's fps filter), ``timestamps`` their
    times in seconds.
    """

    kind: MediaKind
    path: Optional[str]  # resolved path (file or folder); None for pages rendered from text
    width: int
    height: int
    indices: list[int]
    timestamps: list[float]
    fps: Optional[float] = None
    info: dict[str, Any] = field(default_factory=dict)  # backend/stage private (pts, time base, files)

    @property
    def num_frames(self) -> int:
        return len(self.indices)


@dataclass
class Clip:
    """Decoded frames of one media item: ``frames`` is uint8 RGB ``[T, H, W, 3]``."""

    kind: MediaKind
    path: Optional[str]
    frames: np.ndarray
    timestamps: np.ndarray  # seconds, float64 [T]
    source_indices: np.ndarray  # index of each frame in the source (decoded order), int64 [T]
    fps: Optional[float] = None  # sampling rate the frames were taken at (None: as-is)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])


@dataclass
class Sample:
    """What the dataset yields for a kept record."""

    key: str
    source: str
    record: Record
    clips: list[Clip]
    model_record: Optional[dict[str, Any]] = None  # the formatted training record (model stage)
    tokens: Optional[dict[str, int]] = None  # {"text", "visual", "total"} (budget stage)
    #: the decode group (the key of its first record): samples of one group share their
    #: clips, the very same frame arrays; copy a clip before changing it in place
    group: Optional[str] = None
    #: what fitting to the token budget reduced (filter.over_budget), or None
    fitted: Optional[dict[str, Any]] = None

    @property
    def num_frames(self) -> int:
        return sum(c.num_frames for c in self.clips if c.kind != "image")


@dataclass(frozen=True)
class Drop:
    """Stands in for a skipped record when the dataset is asked to report drops."""

    key: str
    source: str
    reason: str
    path: Optional[str] = None
    message: str = ""
