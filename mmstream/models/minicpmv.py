"""MiniCPM-V (Llama3-V 2.5 and 2.6): T2Vid's multi-image training record and token counts.

    model = get_model(ModelConfig(name="minicpmv-2.5", tokenizer="tok/"))
    model.format(record, frame_counts=[24])
    # {"id": ..., "image": {"<image_00>": "key/00000.jpg", ...},
    #  "conversations": [{"role": "user", "content": "<image_00>\\n...<image_23>\\nQ"}, ...]}

Visual tokens per image: ``query_num x (1 + cols x rows)`` where the slice grid
comes from :func:`minicpmv_slice_grid` (none, i.e. one crop, when the image is at
most 448^2 in area or ``max_slice_nums`` is 1). ``query_num`` is 96 for 2.5 and 64
for 2.6. T2Vid trains 2.5 with ``max_slice_nums=1``: 96 tokens per frame.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence

from ..errors import ConfigError
from ..types import Record
from .base import (MediaShape, Model, checked_turns, default_frame_names, media_by_turn,
                   strip_tags)

SCALE_RESOLUTION = 448  # side of the square area one crop/slice stands for
QUERY_NUM_25 = 96  # resampler queries per crop, MiniCPM-Llama3-V-2.5
QUERY_NUM_26 = 64  # resampler queries per crop, MiniCPM-V-2.6

# placeholder tokens as MiniCPM-V's processor writes them
IM_START, IM_END = "<image>", "</image>"
SLICE_START, SLICE_END = "<slice>", "</slice>"
ID_START, ID_END = "<image_id>", "</image_id>"
QUERY_TOKEN = "<unk>"

IMAGE_KEY = "<image_{:02d}>"  # the record's per-image placeholder, numbered over the sample
IMAGE_KEY_RE = re.compile(r"<image_\d+>")


def minicpmv_slice_grid(width: int, height: int, max_slice_nums: int,
                        scale_resolution: int = SCALE_RESOLUTION) -> Optional[tuple[int, int]]:
    """``(cols, rows)`` of the slices MiniCPM-V cuts an image into, or None for one crop.

    ratio = W*H / scale^2; multiple = min(ceil(ratio), max_slice_nums); multiple <= 1
    means one crop. Otherwise every factorisation cols x rows of the slice counts
    {multiple-1, multiple, multiple+1} (without 1 and without counts above
    max_slice_nums) is a candidate; the one with the smallest
    |log(W/H) - log(cols/rows)| wins, the first one on ties.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    ratio = width * height / (scale_resolution * scale_resolution)
    multiple = min(math.ceil(ratio), max_slice_nums)
    if multiple <= 1:
        return None
    log_ratio = math.log(width / height)
    best, best_err = None, math.inf
    for count in (multiple - 1, multiple, multiple + 1):
        if count == 1 or count > max_slice_nums:
            continue
        for cols in range(1, count + 1):
            if count % cols:
                continue
            rows = count // cols
            err = abs(log_ratio - math.log(cols / rows))
            if err < best_err:
                best, best_err = (cols, rows), err
    return best


def minicpmv_image_tokens(width: int, height: int, query_num: int, max_slice_nums: int) -> int:
    """Visual (query) tokens of one image: ``query_num x (1 + cols x rows)``."""
    grid = minicpmv_slice_grid(width, height, max_slice_nums)
    return query_num * (1 + (grid[0] * grid[1] if grid else 0))


def minicpmv_record(record: Record, frame_counts: Sequence[int],
                    frame_names: Optional[Sequence[Sequence[str]]] = None) -> dict[str, Any]:
    """T2Vid's ``reformat_json`` output (REFERENCE 6), for any normalised record.

    Every frame (and every image) gets a key ``<image_NN>`` numbered over the sample.
    A user turn holding media tags loses them, is stripped, and gets one
    ``<image_NN>\\n`` per frame of those media in front; other turns are verbatim.
    A record with no tags has all its media in front of the first user turn.
    Synthetic records (``record.meta["synthetic"]``) carry no ``id``.
    """
    turns = checked_turns(record)
    names = frame_names if frame_names is not None else default_frame_names(record, frame_counts)
    if len(names) != len(frame_counts) or any(len(n) != c for n, c in zip(names, frame_counts)):
        raise ValueError("frame_names must hold one name per frame of each media item")
    image: dict[str, str] = {}
    keys: list[list[str]] = []
    for media_names in names:
        ks = []
        for name in media_names:
            key = IMAGE_KEY.format(len(image))
            image[key] = name
            ks.append(key)
        keys.append(ks)
    conversations = []
    for turn, media in zip(turns, media_by_turn(record, turns)):
        content = turn.content
        if media:
            content = "".join(f"{k}\n" for i in media for k in keys[i]) + strip_tags(content).strip()
        conversations.append({"role": turn.role, "content": content})
    out: dict[str, Any] = {}
    if not record.meta.get("synthetic"):
        out["id"] = record.id if record.id is not None else record.key
    out["image"] = image
    out["conversations"] = conversations
    return out


def image_sizes(shapes: Sequence[MediaShape]) -> list[tuple[int, int]]:
    """(width, height) of every image the model sees, in sample order (a frame is an image)."""
    out = []
    for s in shapes:
        out.extend([(s.width, s.height)] * (1 if s.kind == "image" else s.num_frames))
    return out


class MiniCPMV(Model):
    query_num = QUERY_NUM_26
    output_format = "minicpmv"
    OPTIONS: dict[str, Any] = {
        "max_slice_nums": 9,  # MiniCPM-V finetune default; T2Vid uses 1 (no slicing)
        "use_image_id": True,  # 2.6 writes <image_id>N</image_id> before each image
    }

    def check_options(self) -> None:
        n = self.options["max_slice_nums"]
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"model.options.max_slice_nums: must be an integer >= 1 (got {n!r})")

    def visual_tokens(self, width: int, height: int) -> int:
        return minicpmv_image_tokens(width, height, self.query_num, self.options["max_slice_nums"])

    def format(self, record, frame_counts, frame_names=None, fps=None) -> dict:
        self._check_counts(record, frame_counts)
        return minicpmv_record(record, frame_counts, frame_names)

    # -- chat_template mode ------------------------------------------------------------
    def placeholder_tokens(self) -> list[str]:
        tokens = [IM_START, IM_END, QUERY_TOKEN]
        if self.options["max_slice_nums"] > 1:
            tokens += [SLICE_START, SLICE_END]
        if self.options["use_image_id"]:
            tokens += [ID_START, ID_END]
        return tokens

    def image_placeholder(self, width: int, height: int, index: int) -> str:
        """The text one image becomes: ``<image>`` + queries + ``</image>``, then the
        slices row by row (``<slice>`` + queries + ``</slice>``, rows split by newlines)."""
        queries = QUERY_TOKEN * self.query_num
        text = IM_START + queries + IM_END
        if self.options["use_image_id"]:
            text = f"{ID_START}{index}{ID_END}" + text
        grid = minicpmv_slice_grid(width, height, self.options["max_slice_nums"])
        if grid:
            cols, rows = grid
            text += "\n" + "\n".join((SLICE_START + queries + SLICE_END) * cols for _ in range(rows))
        return text

    def templated_text(self, model_record: dict, shapes: Sequence[MediaShape]) -> str:
        sizes = image_sizes(shapes)
        keys = list(model_record.get("image") or {})
        if len(keys) != len(sizes):
            raise ValueError(f"{len(keys)} images in the record, {len(sizes)} in the shapes")
        index = {k: i for i, k in enumerate(keys)}

        def expand(m: re.Match) -> str:
            i = index.get(m.group(0))
            return m.group(0) if i is None else self.image_placeholder(*sizes[i], i)

        messages = [{"role": c["role"], "content": IMAGE_KEY_RE.sub(expand, c["content"])}
                    for c in model_record["conversations"]]
        return self.render_template(messages)


class MiniCPMV25(MiniCPMV):
    """MiniCPM-Llama3-V-2.5 as T2Vid trains it: 96 tokens per frame, no slicing."""

    names = ("minicpmv-2.5",)
    query_num = QUERY_NUM_25
    OPTIONS = {**MiniCPMV.OPTIONS, "max_slice_nums": 1, "use_image_id": False}


class MiniCPMV26(MiniCPMV):
    """MiniCPM-V-2.6: 64 tokens per crop, slicing up to ``max_slice_nums`` (default 9)."""

    names = ("minicpmv-2.6",)
    query_num = QUERY_NUM_26


__all__ = ["MiniCPMV25", "MiniCPMV26", "minicpmv_slice_grid", "minicpmv_image_tokens", "minicpmv_record",
           "SCALE_RESOLUTION", "QUERY_NUM_25", "QUERY_NUM_26"]
